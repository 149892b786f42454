"""The orders catalogue: the newest revision of each product wins, and a jump no real change explains is refused."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus.errors import PermanentError
from eventbus.models import InboxMessage
from inventory.events import ProductChanged
from orders.models import CatalogProduct
from orders.services import MAX_REVISION_JUMP, ImplausibleRevision, catalog_product_apply
from tests.delivery import deliver

pytestmark = pytest.mark.django_db


def change(revision: int, price: str, sku: str = "P001") -> ProductChanged:
    return ProductChanged(product_id=sku, name="Espresso beans", price=price, currency="USD", revision=revision)


def test_a_revision_jump_no_change_in_flight_explains_is_refused_and_real_changes_still_apply():
    # Given the catalogue at revision 3 of P001, priced 75.00
    for revision, price in [(1, "70.00"), (2, "72.00"), (3, "75.00")]:
        deliver("orders.update_catalog", change(revision, price), task_id=f"task-{revision}")

    # When the forged change of issue 10 arrives (price 0.01, revision 99999)
    with pytest.raises(PermanentError, match="revision 99999"):
        deliver("orders.update_catalog", change(99999, "0.01"), task_id="task-forged")

    # Then it is refused (a worker dead-letters it) and leaves nothing behind
    product = CatalogProduct.objects.get(sku="P001")
    assert (product.price, product.revision) == (Decimal("75.00"), 3)
    assert not InboxMessage.objects.filter(task_id="task-forged").exists()

    # And the next real change still applies
    assert deliver("orders.update_catalog", change(4, "76.00"), task_id="task-4") == "done"
    assert CatalogProduct.objects.get(sku="P001").price == Decimal("76.00")


def test_a_product_never_seen_counts_as_revision_zero():
    with pytest.raises(ImplausibleRevision):
        catalog_product_apply(sku="P404", name="Ghost", price=Decimal("0.01"), currency="USD", revision=99999)
    assert not CatalogProduct.objects.filter(sku="P404").exists()

    assert catalog_product_apply(
        sku="P404", name="Kettle", price=Decimal("59.90"), currency="USD", revision=MAX_REVISION_JUMP
    )
    assert CatalogProduct.objects.get(sku="P404").revision == MAX_REVISION_JUMP


def test_the_largest_jump_allowed_applies_and_one_more_is_refused():
    catalog_product_apply(sku="P001", name="Beans", price=Decimal("1.00"), currency="USD", revision=1)
    with pytest.raises(ImplausibleRevision):
        catalog_product_apply(
            sku="P001", name="Beans", price=Decimal("9.00"), currency="USD", revision=2 + MAX_REVISION_JUMP
        )
    assert catalog_product_apply(
        sku="P001", name="Beans", price=Decimal("2.00"), currency="USD", revision=1 + MAX_REVISION_JUMP
    )


@st.composite
def deliveries(draw):
    """Revisions 1..6 of one product, some delivered twice, in any order."""
    repeated = draw(st.lists(st.integers(1, 6), max_size=6))
    return draw(st.permutations([*range(1, 7), *repeated]))


@settings(max_examples=60, deadline=None)
@given(deliveries())
def test_real_changes_in_any_order_and_repeated_end_at_the_newest(revisions):
    """Inventory published revisions 1..6 of a new product (price = revision): none is refused, and
    the catalogue ends at the newest whatever the order of arrival."""
    CatalogProduct.objects.filter(sku="P777").delete()
    for revision in revisions:
        catalog_product_apply(sku="P777", name="Mug", price=Decimal(revision), currency="USD", revision=revision)
    product = CatalogProduct.objects.get(sku="P777")
    assert (product.revision, product.price) == (6, Decimal("6.00"))
