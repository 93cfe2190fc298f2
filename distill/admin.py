from django.contrib import admin

from distill.models import FileRating, Iteration, LLMCall, Run, RunStep


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "source_url", "profile", "status", "iteration_count", "cost_usd", "created_at")
    list_filter = ("status", "kind", "profile")
    search_fields = ("source_url", "source_title")
    raw_id_fields = ("submitted_by",)


@admin.register(Iteration)
class IterationAdmin(admin.ModelAdmin):
    list_display = ("id", "run", "number", "state", "exit_code", "succeeded")
    list_filter = ("state", "succeeded")
    raw_id_fields = ("run",)


@admin.register(LLMCall)
class LLMCallAdmin(admin.ModelAdmin):
    list_display = ("id", "run", "stage", "model", "status", "tokens_in", "tokens_out", "cost_usd")
    list_filter = ("status", "stage")
    raw_id_fields = ("run",)


admin.site.register(RunStep)
admin.site.register(FileRating)
