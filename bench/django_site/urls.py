from __future__ import annotations

from django.urls import path

from bench.django_site.benchapp import views

urlpatterns = [path("order/<int:number>", views.place_order)]
