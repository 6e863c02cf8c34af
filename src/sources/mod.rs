//! Sources of objects: a directory of manifests (file mode) or the Kubernetes API (kube mode),
//! and kube mode's writes back (route status, Events, leader election, the EndpointSlices of
//! transparent serving).

pub mod file;
pub mod file_state;
pub mod kube;
pub mod kube_endpoints;
pub mod kube_links;
pub mod kube_status;
pub mod positions;
pub mod seam;
pub mod watch;
