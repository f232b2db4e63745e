"""Cluster tooling: Serve configs, a local multi-node Ray launcher, cloud and KubeRay manifests."""
