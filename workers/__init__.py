"""The Celery side of ICOW: model repository, runtime, runner, result writer, worker."""
