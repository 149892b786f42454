from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventbus.health import Figures, register_figures
        from orders import receivers  # noqa: F401  (connects the order_placed receiver)
        from orders.selectors import order_count_per_status

        register_figures(
            Figures(name="orders", label="status", description="Orders per status", read=order_count_per_status)
        )
