from django.http import JsonResponse


def _todo(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


api_index = openapi = example_list = example_detail = example_versions = _todo
