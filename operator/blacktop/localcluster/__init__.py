"""A real local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback."""

from blacktop.localcluster.cluster import ClusterStartError, LocalCluster
from blacktop.localcluster.detached import ClusterInfo, default_state_dir, down, status, up

__all__ = ["ClusterInfo", "ClusterStartError", "LocalCluster", "default_state_dir", "down", "status", "up"]
