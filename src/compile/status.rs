//! Route status as a controller named `meshroute.dev/controller` would write it: one
//! `status.parents[]` entry per Service parentRef with Gateway API conditions and reasons.

use serde::Serialize;

use super::validate::{ParentRefSpec, RouteKind};

pub const CONTROLLER_NAME: &str = "meshroute.dev/controller";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    #[serde(rename = "observedGeneration", skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    #[serde(rename = "parentRef")]
    pub parent_ref: StatusParentRef,
    #[serde(rename = "controllerName")]
    pub controller_name: &'static str,
    pub conditions: Vec<Condition>,
}

/// The status block of one route-like object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    #[serde(skip)]
    pub kind: RouteKind,
    #[serde(skip)]
    pub api_version: String,
    #[serde(skip)]
    pub namespace: String,
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub generation: Option<i64>,
    pub parents: Vec<ParentStatus>,
    /// Things worth telling the author that are not faults: what the spec made of what they
    /// wrote (e.g. an SMI backend left out of the split on a port it lacks).
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl RouteStatus {
    /// Accepted=True on every parent (and at least one parent).
    pub fn accepted(&self) -> bool {
        !self.parents.is_empty()
            && self
                .parents
                .iter()
                .all(|p| p.condition("Accepted").is_some_and(|c| c.status == "True"))
    }

    /// One-line summary of every condition that is not as it should be (empty when healthy).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.parents {
            for c in &p.conditions {
                let bad = match c.type_ {
                    "PartiallyInvalid" => c.status == "True",
                    _ => c.status != "True",
                };
                if bad {
                    out.push(format!(
                        "parent {}: {}={} ({}): {}",
                        p.parent_ref.name, c.type_, c.status, c.reason, c.message
                    ));
                }
            }
        }
        out
    }
}

impl ParentStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl From<&ParentRefSpec> for StatusParentRef {
    fn from(p: &ParentRefSpec) -> Self {
        StatusParentRef {
            group: p.group.to_string(),
            kind: p.kind.to_string(),
            namespace: p.namespace.to_string(),
            name: p.name.to_string(),
            port: p.port,
        }
    }
}

pub fn condition(
    type_: &'static str,
    ok: bool,
    reason: &'static str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_,
        status: if ok { "True" } else { "False" },
        reason,
        message: message.into(),
        observed_generation: generation,
    }
}
