import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0002_saga_legs"),
    ]

    operations = [
        # The column stays `product_id`; it becomes a foreign key to the orders service's catalogue.
        migrations.RenameField(model_name="orderline", old_name="product_id", new_name="product"),
        migrations.AlterField(
            model_name="orderline",
            name="product",
            field=models.ForeignKey(
                db_column="product_id",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="orders.catalogproduct",
            ),
        ),
        migrations.CreateModel(
            name="IdempotencyKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=255, unique=True)),
                ("fingerprint", models.CharField(help_text="SHA-256 of the request body.", max_length=64)),
                ("status_code", models.PositiveSmallIntegerField()),
                ("response", models.JSONField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "order",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="orders.order"
                    ),
                ),
            ],
        ),
    ]
