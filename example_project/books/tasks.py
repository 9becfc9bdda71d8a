"""The example's tasks: a sync ORM task, a long async task with retries, and a periodic task."""

from __future__ import annotations

import asyncio
import datetime
import logging

from django.utils import timezone

from example_project.books.models import Book, LibraryStat, Report
from procrastinate_core import JobContext, RetryStrategy
from procrastinate_core.job_context import AbortReason
from procrastinate_django import app

logger = logging.getLogger(__name__)

#: Seconds each of the report's 5 steps takes (tests make it shorter).
REPORT_STEP_SECONDS = 1.0


@app.task(queue="indexing")
def index_book(book_id: int) -> str:
    """Compute a book's search terms (sync task: the ORM, in the worker's job thread)."""
    book = Book.objects.get(pk=book_id)
    words = sorted({word.lower().strip(".,;:!?") for word in f"{book.title} {book.author}".split()})
    book.search_terms = " ".join(words)
    book.indexed_at = timezone.now()
    book.save(update_fields=["search_terms", "indexed_at"])
    return book.search_terms


@app.task(queue="reports", pass_context=True, retry=RetryStrategy(max_attempts=3, wait=2))
async def generate_report(context: JobContext, report_id: int) -> str:
    """A long async task; its first attempt fails on purpose to show the retry."""
    report = await Report.objects.aget(pk=report_id)
    report.attempts = context.job.attempts
    report.status = "running"
    report.progress = 0
    await report.asave()
    try:
        for step in range(1, 6):
            await asyncio.sleep(REPORT_STEP_SECONDS)
            report.progress = step * 20
            await report.asave(update_fields=["progress"])
            if step == 2 and context.job.attempts == 1:
                report.status = "failed, will retry"
                await report.asave(update_fields=["status"])
                raise RuntimeError("first attempt fails on purpose: watch the retry in the admin")
    except asyncio.CancelledError:
        # Aborted from the admin (or the worker is stopping): say so instead of
        # leaving the report "running" forever. A shutdown requeues the job.
        aborted = context.abort_reason() is AbortReason.USER_REQUEST
        report.status = "aborted" if aborted else "interrupted, will resume"
        await report.asave(update_fields=["status"])
        raise
    count = await Book.objects.acount()
    report.content = f"{count} books in the library at {timezone.now():%H:%M:%S}"
    report.status = "done"
    await report.asave()
    return report.content


@app.periodic(cron="* * * * *")
@app.task(queue="stats", queueing_lock="count_books")
def count_books(timestamp: int) -> int:
    """Every minute: count books and indexed books."""
    at = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    books = Book.objects.count()
    LibraryStat.objects.create(
        at=at, books=books, indexed=Book.objects.filter(indexed_at__isnull=False).count()
    )
    return books
