"""The developer portal: a read-only web page over the operator's own view of the cluster.

Catalog (golden paths, their README and parameters), a request builder (a ServiceRequest manifest
to commit, checked by the same decision admission makes), team and environment views, and the
platform scorecard. It never writes to the cluster and never reads a Secret. The pages are rendered
from :class:`~blacktop.portal.state.ClusterState`, a cache fed by the watch events Kopf already
receives, so a page costs no API call; in ``token`` mode each visitor is identified by TokenReview
and sees only what SubjectAccessReview says RBAC lets them list (:mod:`blacktop.portal.access`).
"""
