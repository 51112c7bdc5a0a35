"""The suite never touches the user's cache: this test runs last (tests/conftest.py orders it so)."""

import os

from cml.paths import cache_root
from tests.conftest import TEST_CACHE, USER_CACHE, snapshot


def test_the_suite_left_the_users_cache_untouched(request):
    assert cache_root() == TEST_CACHE and os.environ["CML_CACHE_DIR"] == str(TEST_CACHE)  # what every cml process inherits
    assert snapshot(USER_CACHE) == request.config.cml_user_cache_before, f"the suite changed {USER_CACHE}"
