//! Sources of objects: a directory of manifests (file mode) or the Kubernetes API (kube mode).

pub mod file;
pub mod watch;
