"""`reviews`: the reviewers' verdicts as an observable source asset.

Its data version is the content hash of the effective reviews' decisions
(``lib/reviews.reviews_version``: the verdict and concept in force per crop and per sample, last
one wins), so a review that changes what is in force makes whatever depends on `reviews` stale,
and a repeated verdict does not.
It is in the ``models`` group with the model identities and the vocabulary, so the observation
job (and ``conceptmine run`` before it plans) records it. Wiring it into `mined_split` (a dep,
and reading ``resources/reviews_log.read_effective``) is the split's business.
"""

import dagster as dg

from conceptmine_assets.assets.models import _observe
from conceptmine_assets.resources.store_views import StoreViews


@dg.observable_source_asset(name="reviews", group_name="models", automation_condition=_observe)
def observe_reviews(store_views: StoreViews) -> dg.DataVersion:
    """The effective reviews' content hash (``reviews:<count>:<hash>``) of ``<store>/reviews/``."""
    from conceptmine_assets.resources.reviews_log import reviews_version_of

    return dg.DataVersion(reviews_version_of(store_views.base_path, store_views.storage_options))
