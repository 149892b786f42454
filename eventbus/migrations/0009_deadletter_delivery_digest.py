from django.db import migrations, models


class Migration(migrations.Migration):
    """Dead letters filed before this keep an empty digest: a redelivery of one of them is filed again, once."""

    dependencies = [
        ("eventbus", "0008_inbox_processed_at_set_by_handling"),
    ]

    operations = [
        migrations.AddField(
            model_name="deadletter",
            name="delivery_digest",
            field=models.CharField(blank=True, db_index=True, max_length=64),
        ),
    ]
