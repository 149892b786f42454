"""Product catalogue API."""

from rest_framework import generics, serializers

from inventory.models import Product
from inventory.selectors import product_list


class ProductSerializer(serializers.ModelSerializer):
    product_id = serializers.CharField(source="sku")
    available = serializers.IntegerField(read_only=True)

    class Meta:
        model = Product
        fields = ["product_id", "name", "price", "available"]


class ProductListApi(generics.ListAPIView):
    """Products with their price and the stock available to new orders."""

    serializer_class = ProductSerializer
    pagination_class = None

    def get_queryset(self):
        return product_list()
