"""The starter catalog (``proctor init``'s ``catalog.toml``) accepts what real users send."""

from __future__ import annotations

import pytest

from proctor.bootstrap import starter_catalog_path
from proctor.config import load_catalog_file
from proctor.core.catalog import Catalog
from proctor.errors import InvalidRequestError


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(load_catalog_file(starter_catalog_path()))


@pytest.mark.parametrize("city", ["東京", "서울", "京", "Rio", "Lisbon"])
def test_a_short_city_name_is_a_destination(catalog, city):
    """Two-character CJK city names are valid destinations (minLength was 3)."""
    catalog.require("travel.search", field="a").validate_params(
        {"destination": city, "date": "2027-03-12"}, field_prefix="steps[0].params"
    )


def test_an_empty_destination_is_refused(catalog):
    """An empty destination is still refused, naming the field."""
    with pytest.raises(InvalidRequestError) as ei:
        catalog.require("travel.search", field="a").validate_params(
            {"destination": "", "date": "2027-03-12"}, field_prefix="steps[0].params"
        )

    assert ei.value.field == "steps[0].params.destination"
