"""Functions declared with django.tasks' @task, for tests/django/test_tasks_backend*.py."""
