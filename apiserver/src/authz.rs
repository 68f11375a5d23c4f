//! Who may do what: authentication by client certificate, and the node authorizer.
//!
//! Every request but `Bootstrap` (which carries a join token instead) must come over TLS with
//! a client certificate signed by the cluster CA; its subject common name is the caller's
//! [`Identity`]. Without one the answer is UNAUTHENTICATED.
//!
//! | identity            | may                                                              |
//! |---------------------|------------------------------------------------------------------|
//! | `admin`             | everything                                                       |
//! | `system:server`     | everything (Raft, forwarding, the control loops)                 |
//! | `system:node:NAME`  | read Pods, Services, Endpoints, Nodes, Events (and, for image     |
//! |                     | trust, TrustKeys, ImageSignatures, Cluster/ImagePolicies and      |
//! |                     | ImageTags); create and update                                     |
//! |                     | its own Node (and its status); update the status of Pods bound to |
//! |                     | NAME; create Events. Nothing else: no Deployments, no other       |
//! |                     | nodes' pods, no deletes, no membership, no Raft.                  |
//! | `token:NAME`        | what the admin may, but no membership (REST bearer tokens)        |
//! | `token:NAME:read-only` | get, list, watch every kind but Secrets                        |
//!
//! Refusals are PERMISSION_DENIED naming the identity and the action.
//!
//! A follower forwards a write to the leader under its own `system:server` identity, naming
//! the original caller in `berth-on-behalf-of` (honored only from servers), so the leader
//! applies the same rules. "Bound to NAME" is checked by the state machine when the entry is
//! applied ([`crate::store::Op::UpdateStatus`]'s `bound_node`), so it cannot race a pod
//! being deleted and re-created elsewhere.

use berth_proto::Kind;
use berth_tls::Identity;
use tonic::{Request, Status};

/// Metadata naming the caller a server forwards a request for.
pub const ON_BEHALF_OF_METADATA: &str = "berth-on-behalf-of";

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    UpdateStatus,
    Apply,
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::UpdateStatus => "update the status of",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
}

/// The caller named by the request's verified client certificate (or, on a request a server
/// forwarded, the identity it names in `berth-on-behalf-of`).
pub fn authenticate<T>(req: &Request<T>) -> Result<Caller, Status> {
    let identity = berth_tls::peer_identity(req).ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: this server requires mutual TLS with a certificate from \
             the cluster CA. The CLI uses the admin config written by `berth server --init` \
             (DATA/admin.yaml; pass --config or copy it to ~/.berth/config); agents and servers \
             join with --token",
        )
    })?;
    if identity == Identity::Server {
        if let Some(v) = req.metadata().get(ON_BEHALF_OF_METADATA) {
            let named = v
                .to_str()
                .ok()
                .and_then(|s| Identity::parse(s).ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{ON_BEHALF_OF_METADATA} does not name an identity"
                    ))
                })?;
            return Ok(Caller { identity: named });
        }
    }
    Ok(Caller { identity })
}

fn denied(who: &Identity, what: String, rule: &str) -> Status {
    Status::permission_denied(format!("{who} may not {what}: {rule}"))
}

const NODE_RULE: &str = "a node may read pods, services, endpoints, nodes, events, registry servers, the ConfigMaps, Secrets, PersistentVolumeClaims and PersistentVolumes its pods reference \
                         and the image trust objects, update its own Node and the status of pods bound to it, and create events";

const READ_ONLY_TOKEN_RULE: &str =
    "a read-only token may get, list and watch every kind but Secrets, and write nothing";

fn describe(kind: Option<Kind>, namespace: &str, name: &str) -> String {
    let kind = kind
        .map(|k| k.to_string())
        .unwrap_or_else(|| "objects of every kind".into());
    match (namespace.is_empty(), name.is_empty()) {
        (_, true) => kind,
        (true, false) => format!("{kind} {name}"),
        (false, false) => format!("{kind} {namespace}/{name}"),
    }
}

impl Caller {
    /// May this caller do `verb` on `kind` (None: every kind) `namespace/name`? `Ok(Some(n))`
    /// means yes, if the object is bound to node `n` when the write is applied.
    pub fn authorize(
        &self,
        verb: Verb,
        kind: Option<Kind>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let node = match &self.identity {
            Identity::Admin | Identity::Server => return Ok(None),
            Identity::Token {
                read_only: false, ..
            } => return Ok(None),
            Identity::Token {
                read_only: true, ..
            } => {
                return match verb {
                    Verb::Get | Verb::List | Verb::Watch if kind != Some(Kind::Secret) => Ok(None),
                    _ => Err(denied(
                        &self.identity,
                        format!("{} {}", verb.as_str(), describe(kind, namespace, name)),
                        READ_ONLY_TOKEN_RULE,
                    )),
                }
            }
            Identity::Node(n) => n,
        };
        let what = || format!("{} {}", verb.as_str(), describe(kind, namespace, name));
        let deny = || Err(denied(&self.identity, what(), NODE_RULE));
        let Some(kind) = kind else {
            return deny();
        };
        match verb {
            // Kubernetes' node authorizer: a node reads a ConfigMap or Secret only by name, and
            // only while a pod bound to it references it (checked against the store by the
            // caller, for `Ok(Some(node))`).
            // The same for the PersistentVolumeClaims its pods use and their volumes.
            Verb::Get
                if matches!(
                    kind,
                    Kind::ConfigMap
                        | Kind::Secret
                        | Kind::PersistentVolumeClaim
                        | Kind::PersistentVolume
                ) =>
            {
                Ok(Some(node.clone()))
            }
            Verb::Get | Verb::List | Verb::Watch => match kind {
                Kind::Pod
                | Kind::Service
                | Kind::Endpoints
                | Kind::Node
                | Kind::Event
                | Kind::RegistryServer => Ok(None),
                // Image trust: agents re-check images before starting containers.
                Kind::TrustKey
                | Kind::ImageSignature
                | Kind::ClusterImagePolicy
                | Kind::ImagePolicy
                | Kind::ImageTag => Ok(None),
                _ => deny(),
            },
            Verb::Create => match kind {
                Kind::Event => Ok(None),
                Kind::Node if name == node => Ok(None),
                _ => deny(),
            },
            Verb::Update | Verb::Apply => match kind {
                Kind::Node if name == node => Ok(None),
                _ => deny(),
            },
            Verb::UpdateStatus => match kind {
                Kind::Node if name == node => Ok(None),
                Kind::Pod => Ok(Some(node.clone())),
                _ => deny(),
            },
            // The kubelet's final delete of a pod it has stopped (graceful deletion); the
            // caller checks the binding and requires a resourceVersion precondition.
            Verb::Delete => match kind {
                Kind::Pod => Ok(Some(node.clone())),
                _ => deny(),
            },
        }
    }

    /// Membership changes and Raft traffic: servers (and, for membership, the admin) only.
    pub fn authorize_membership(&self, action: &str) -> Result<(), Status> {
        match self.identity {
            Identity::Admin | Identity::Server => Ok(()),
            Identity::Node(_) | Identity::Token { .. } => Err(denied(
                &self.identity,
                action.to_string(),
                "cluster membership is changed by servers and the admin only",
            )),
        }
    }
}

/// Raft peer traffic is accepted from `system:server` certificates only.
pub fn authorize_raft_peer<T>(req: &Request<T>) -> Result<(), Status> {
    match berth_tls::peer_identity(req) {
        Some(Identity::Server) => Ok(()),
        Some(other) => Err(denied(
            &other,
            "send raft messages".to_string(),
            "only API servers (system:server) are raft peers",
        )),
        None => Err(Status::unauthenticated(
            "raft traffic requires a system:server client certificate from the cluster CA",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(n: &str) -> Caller {
        Caller {
            identity: Identity::Node(n.into()),
        }
    }

    #[test]
    fn admin_and_servers_may_do_everything() {
        for identity in [Identity::Admin, Identity::Server] {
            let c = Caller { identity };
            assert_eq!(
                c.authorize(Verb::Delete, Some(Kind::Deployment), "default", "web")
                    .unwrap(),
                None
            );
            assert_eq!(c.authorize(Verb::Watch, None, "", "").unwrap(), None);
            c.authorize_membership("join").unwrap();
        }
    }

    #[test]
    fn a_node_reads_what_it_needs_and_writes_only_its_own_objects() {
        let n = node("n1");
        for k in [
            Kind::Pod,
            Kind::Service,
            Kind::Endpoints,
            Kind::Node,
            Kind::Event,
        ] {
            assert!(n.authorize(Verb::List, Some(k), "", "").is_ok(), "{k}");
            assert!(n.authorize(Verb::Watch, Some(k), "", "").is_ok(), "{k}");
        }
        assert!(n
            .authorize(Verb::Create, Some(Kind::Node), "", "n1")
            .is_ok());
        assert!(n
            .authorize(Verb::Update, Some(Kind::Node), "", "n1")
            .is_ok());
        assert!(n
            .authorize(Verb::UpdateStatus, Some(Kind::Node), "", "n1")
            .is_ok());
        assert!(n
            .authorize(Verb::Create, Some(Kind::Event), "default", "e1")
            .is_ok());
        assert_eq!(
            n.authorize(Verb::UpdateStatus, Some(Kind::Pod), "default", "web-1")
                .unwrap(),
            Some("n1".to_string()),
            "pod status only if bound to n1 when applied"
        );
    }

    #[test]
    fn a_node_may_delete_a_pod_only_as_its_binding_allows() {
        // The kubelet's final delete after a graceful stop: allowed here, with the pod's
        // binding to this node (and a resourceVersion precondition) checked by the caller.
        let n = node("n1");
        let bound = n
            .authorize(Verb::Delete, Some(Kind::Pod), "default", "web-1")
            .expect("a node deletes its stopped pods");
        assert_eq!(bound.as_deref(), Some("n1"));
    }

    #[test]
    fn a_node_is_refused_everything_else_with_a_clear_message() {
        let n = node("n1");
        let cases = [
            (Verb::Create, Some(Kind::Deployment), "default", "web"),
            (Verb::Apply, Some(Kind::Service), "default", "web"),
            (Verb::Update, Some(Kind::Node), "", "n2"),
            (Verb::UpdateStatus, Some(Kind::Node), "", "n2"),
            (Verb::Create, Some(Kind::Node), "", "n2"),
            (Verb::Update, Some(Kind::Pod), "default", "web-1"),
            (Verb::Delete, Some(Kind::Service), "default", "web"),
            (Verb::Delete, Some(Kind::Node), "", "n1"),
            (Verb::Get, Some(Kind::Deployment), "default", "web"),
            (Verb::List, Some(Kind::ReplicaSet), "", ""),
            (Verb::Watch, None, "", ""),
        ];
        for (verb, kind, ns, name) in cases {
            let err = n.authorize(verb, kind, ns, name).unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::PermissionDenied,
                "{verb:?} {kind:?}"
            );
            assert!(
                err.message().starts_with("system:node:n1 may not "),
                "{}",
                err.message()
            );
        }
        let err = n
            .authorize(Verb::Create, Some(Kind::Deployment), "default", "web")
            .unwrap_err();
        assert!(
            err.message().contains("create Deployment default/web"),
            "{}",
            err.message()
        );
        assert!(n.authorize_membership("join the cluster").is_err());
    }
}
