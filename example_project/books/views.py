"""The example's pages: sync views defer inside the request's transaction, async ones await."""

from __future__ import annotations

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from example_project.books.models import Book, LibraryStat, Report
from example_project.books.tasks import generate_report, index_book


class BookForm(forms.ModelForm):
    class Meta:
        model = Book
        fields = ["title", "author"]


def book_list(request: HttpRequest) -> HttpResponse:
    """List books; adding one defers its indexing in the same transaction."""
    form = BookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            book = form.save()
            index_book.defer(book_id=book.pk)  # rolled back with the book if anything fails
        return redirect("book_list")
    context = {
        "form": form,
        "books": Book.objects.all()[:50],
        "stat": LibraryStat.objects.first(),
        "reindexed": request.GET.get("reindexed", ""),
    }
    return render(request, "books/book_list.html", context)


def reports(request: HttpRequest) -> HttpResponse:
    """Ask for a report: a long task that fails once, then succeeds on retry."""
    if request.method == "POST":
        with transaction.atomic():
            report = Report.objects.create()
            generate_report.defer(report_id=report.pk)
        return redirect("reports")
    return render(request, "books/reports.html", {"reports": Report.objects.all()[:20]})


async def reindex_all(request: HttpRequest) -> HttpResponse:
    """Async view: defer the indexing of every book with defer_async.

    A browser's form post goes back to the book list, which says how many were
    deferred; a client asking for JSON gets the count as JSON.
    """
    if request.method != "POST":
        return JsonResponse({"error": "POST to reindex every book"}, status=405)
    ids = [pk async for pk in Book.objects.values_list("pk", flat=True)]
    for pk in ids:
        await index_book.defer_async(book_id=pk)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"deferred": len(ids)})
    return redirect(f"{reverse('book_list')}?reindexed={len(ids)}")


async def status(request: HttpRequest) -> HttpResponse:
    """Async view: a JSON snapshot of the library (what the acceptance test polls)."""
    books = [
        {
            "id": b.pk,
            "title": b.title,
            "indexed": b.indexed_at is not None,
            "search_terms": b.search_terms,
        }
        async for b in Book.objects.all()
    ]
    reports_ = [
        {"id": r.pk, "status": r.status, "attempts": r.attempts} async for r in Report.objects.all()
    ]
    return JsonResponse({"books": books, "reports": reports_})
