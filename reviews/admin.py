"""Admin of expert review: scoring forms with their questions inline, queues, answers to look at."""

from django.contrib import admin

from reviews.models import Answer, Comparison, Question, Review, ReviewQueue, ScoringForm


class QuestionInline(admin.StackedInline):
    model = Question
    extra = 1
    fields = (("order", "key", "kind", "required"), "text", "help_text", "choices", "suggest_from")


@admin.register(ScoringForm)
class ScoringFormAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)
    inlines = [QuestionInline]


@admin.register(ReviewQueue)
class ReviewQueueAdmin(admin.ModelAdmin):
    list_display = ("name", "form", "scores_needed", "created_by", "created_at")
    filter_horizontal = ("experts",)
    raw_id_fields = ("created_by",)


class AnswerInline(admin.TabularInline):
    model = Answer
    extra = 0
    readonly_fields = ("question", "value", "suggested", "changed")
    can_delete = False


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("item", "expert", "submitted_at")
    raw_id_fields = ("item", "expert")
    inlines = [AnswerInline]


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("first", "second", "expert", "choice", "created_at")
    raw_id_fields = ("first", "second", "shown_left", "expert")
