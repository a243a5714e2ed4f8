import pytest

from proxy.config import RouteConfig
from proxy.core.errors import NotFound
from proxy.edges._routes import RouteTable


def table():
    return RouteTable([
        RouteConfig(name="any", upstream="http://u0"),
        RouteConfig(name="orders", upstream="http://u1", hosts=("orders.internal",)),
        RouteConfig(name="orders-api", upstream="http://u2", hosts=("orders.internal",), path_prefix="/api"),
    ])


@pytest.mark.parametrize("host,path,route", [
    ("orders.internal", "/api", "orders-api"),
    ("orders.internal", "/api/v1", "orders-api"),
    ("orders.internal", "/apix", "orders"),
    ("orders.internal", "/", "orders"),
    ("other.internal", "/api", "any"),
])
def test_most_specific_route_wins(host, path, route):
    assert table().match(host, path).name == route


def test_no_route_is_not_found():
    only = RouteTable([RouteConfig(name="o", upstream="http://u", hosts=("orders.internal",))])
    with pytest.raises(NotFound) as err:
        only.match("evil.internal", "/")
    assert err.value.reason == "no_route"
