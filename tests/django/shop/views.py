from django.http import HttpRequest, JsonResponse

from shop.tasks import send_welcome


def signup(request: HttpRequest) -> JsonResponse:
    handle = send_welcome.delay(int(request.GET["user"]))
    return JsonResponse({"task_id": handle.id}, status=202)
