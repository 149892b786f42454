"""Product catalogue API."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inventory.selectors import product_list_available


class ProductSerializer(serializers.Serializer):
    product_id = serializers.CharField()
    name = serializers.CharField()
    price = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()
    available = serializers.IntegerField(help_text="Units new orders can still get (on hand minus reserved).")


class ProductListApi(APIView):
    """Products with their price and the stock available to new orders."""

    @extend_schema(responses=ProductSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ProductSerializer(product_list_available(), many=True).data)
