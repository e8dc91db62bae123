from django.urls import path

from metering import api

urlpatterns = [path("usage", api.UsageApi.as_view(), name="usage")]
