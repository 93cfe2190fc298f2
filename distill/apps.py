from django.apps import AppConfig


class DistillConfig(AppConfig):
    name = "distill"
    verbose_name = "Distillation"

    def ready(self):
        from distill import checks  # noqa: F401  (registers the system checks)
