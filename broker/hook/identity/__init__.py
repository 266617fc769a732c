"""Where the pod's SVID comes from: the SPIFFE Workload API, or files (spiffe-helper layout)."""

from broker.hook.identity.files import FileIdentity, SvidFiles
from broker.hook.identity.workload_api import WorkloadIdentity

__all__ = ["FileIdentity", "SvidFiles", "WorkloadIdentity"]
