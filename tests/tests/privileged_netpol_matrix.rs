//! NetworkPolicy semantics probed for real, in the style of Kubernetes' e2e netpol suite: three
//! namespaces of three pods on a two-node lab cluster, each case a set of policies applied with
//! the real kubectl (and updates: a policy changed, a pod or namespace relabelled, a policy
//! deleted) and the expected 9×9 truth table on ports 80 and 81.

use std::time::Duration;

use apiary_tests::{
    cluster::{CLUSTER_CIDR, ClusterLab},
    netpol::{Matrix, Peer, Truth},
    require_privileges,
};

/// What a case does, in order.
enum Step {
    /// `kubectl apply` of a manifest (`{ip:NS/POD}` placeholders filled in).
    Apply(&'static str),
    /// Any other kubectl command (relabels, deletions).
    Kubectl(&'static [&'static str]),
    /// The truth table to converge to.
    Expect(fn(Peer, Peer, u16) -> bool),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

use Step::{Apply, Expect, Kubectl};

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case { name, steps }
}

/// A pod's policy can reach x/a only when `allowed`; others are open (a pod selected by no
/// policy is open).
fn to_xa(from: Peer, to: Peer, allowed: bool) -> bool {
    !to.is("x/a") || allowed || from == to
}

const DENY_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

fn cases() -> Vec<Case> {
    vec![
        case(
            "default-deny-ingress",
            vec![Apply(DENY_INGRESS_X), Expect(|_, to, _| to.ns != "x")],
        ),
        case(
            "default-deny-all",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
",
                ),
                Expect(|from, to, _| from.ns != "x" && to.ns != "x"),
            ],
        ),
        case(
            "allow from a pod of the server's namespace, by podSelector",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.is("x/b"))),
            ],
        ),
        case(
            "allow ingress to one target under a namespace-wide deny",
            vec![
                Apply(DENY_INGRESS_X),
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-xa, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
",
                ),
                Expect(|_, to, _| to.ns != "x" || to.is("x/a")),
            ],
        ),
        case(
            "allow from pods of all namespaces (empty namespaceSelector), one port",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-all-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, port == 80)),
            ],
        ),
        case(
            "allow only from another namespace, by namespaceSelector",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]
",
                ),
                Expect(|from, to, _| to.ns != "x" || from.ns == "y"),
            ],
        ),
        case(
            "podSelector with matchExpressions (In)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-b-expr, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.is("x/b"))),
            ],
        ),
        case(
            "namespaceSelector with matchExpressions (NotIn)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-not-from-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns != "x")),
            ],
        ),
        case(
            "target podSelector with NotIn; peers with Exists and DoesNotExist",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-a, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
      namespaceSelector: {matchExpressions: [{key: extra, operator: DoesNotExist}, {key: ns, operator: In, values: [z]}]}
",
                ),
                Expect(|from, to, _| to.ns != "x" || to.pod == "a" || from.ns == "z"),
            ],
        ),
        case(
            "podSelector OR namespaceSelector (two peers)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns == "y" || from.is("x/b"))),
            ],
        ),
        case(
            "podSelector AND namespaceSelector (one peer)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ['y', z]}]}
      podSelector: {matchLabels: {pod: b}}
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.pod == "b" && from.ns != "x")),
            ],
        ),
        case(
            "several pods of several namespaces",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-multi, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ['y', z]}]}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns != "x" && from.pod != "c")),
            ],
        ),
        case(
            "empty podSelector peer: every pod of the policy's namespace only",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-from-x, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
",
                ),
                Expect(|from, to, _| to.ns != "x" || from.ns == "x"),
            ],
        ),
        case(
            "ports by number",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-b-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80, protocol: TCP}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, from.is("x/b") && port == 80)),
            ],
        ),
        case(
            "stacked policies with overlapping podSelectors union",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-y-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 81}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-z-80, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| {
                    to.ns != "x"
                        || from.ns == "z" && port == 80
                        || to.pod == "a" && from.ns == "y" && port == 81
                }),
            ],
        ),
        case(
            "allow-all beside deny-all",
            vec![
                Apply(DENY_INGRESS_X),
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
",
                ),
                Expect(|_, _, _| true),
            ],
        ),
        case(
            "ingress on one named port",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-named-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-tcp}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, port == 81)),
            ],
        ),
        case(
            "ingress from a namespace on one named port",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-y-named-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: serve-80-tcp}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, from.ns == "y" && port == 80)),
            ],
        ),
        case(
            "egress on one named port (resolved on each destination)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-egress-named-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-80-tcp}]}]
",
                ),
                Expect(|from, _, port| !from.is("x/a") || port == 80),
            ],
        ),
        case(
            "an updated policy replaces the old rules",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-updated, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, from.is("x/b") && port == 80)),
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-updated, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, from.is("x/c") && port == 81)),
            ],
        ),
        case(
            "ingress from a namespace once it is relabelled",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-updated-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {extra: updated}}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, false)),
                Kubectl(&["label", "namespace", "y", "extra=updated"]),
                Expect(|from, to, _| to_xa(from, to, from.ns == "y")),
            ],
        ),
        case(
            "ingress from a pod once it is relabelled",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-updated-pod, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {extra: updated}}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, false)),
                Kubectl(&["label", "pod", "-n", "z", "b", "extra=updated"]),
                Expect(|from, to, _| to_xa(from, to, from.is("z/b"))),
                // And back: the old identity is allowed no more.
                Kubectl(&["label", "pod", "-n", "z", "b", "extra-"]),
                Expect(|from, to, _| to_xa(from, to, false)),
            ],
        ),
        case(
            "deny ingress from other namespaces",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
",
                ),
                Expect(|from, to, _| to.ns != "x" || from.ns == "x"),
            ],
        ),
        case(
            "a pod becomes selected when relabelled",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-updated, namespace: x}
spec:
  podSelector: {matchLabels: {extra: target}}
  policyTypes: [Ingress]
",
                ),
                Expect(|_, _, _| true),
                Kubectl(&["label", "pod", "-n", "x", "a", "extra=target"]),
                Expect(|from, to, _| to_xa(from, to, false)),
            ],
        ),
        case(
            "deny egress from one pod",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-no-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
",
                ),
                Expect(|from, _, _| !from.is("x/a")),
            ],
        ),
        case(
            "deny egress from all pods of a namespace",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-no-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
",
                ),
                Expect(|from, _, _| from.ns != "x"),
            ],
        ),
        case(
            "ingress and egress in one policy",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
",
                ),
                Expect(|from, to, _| {
                    (!to.is("x/a") || from.ns == "y") && (!from.is("x/a") || to.ns == "z")
                }),
            ],
        ),
        case(
            "the client's egress deny wins over the server's allow",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-no-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: yb-from-xa, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]
",
                ),
                Expect(|from, to, _| !from.is("x/a") && !to.is("y/b")),
            ],
        ),
        case(
            "egress to a pod of another namespace, by podSelector and namespaceSelector; Ingress implied",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-ya, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: a}}}]}]
",
                ),
                // No policyTypes: Ingress is implied, so x/a admits nobody.
                Expect(|from, to, _| !to.is("x/a") && (!from.is("x/a") || to.is("y/a"))),
            ],
        ),
        case(
            "any port of one protocol",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{protocol: TCP}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns == "y")),
            ],
        ),
        case(
            "a UDP-only or SCTP-only policy opens no TCP",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: UDP, port: 80}, {protocol: UDP, port: 81}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xb-sctp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{ports: [{protocol: SCTP, port: 80}, {protocol: SCTP, port: 81}]}]
",
                ),
                Expect(|from, to, _| from == to || !(to.is("x/a") || to.is("x/b"))),
            ],
        ),
        case(
            "an ingress allow-all takes precedence over a narrower policy",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-b-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| to_xa(from, to, from.is("x/b") && port == 80)),
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}
",
                ),
                Expect(|_, _, _| true),
            ],
        ),
        case(
            "an egress allow-all takes precedence over a narrower policy",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-b-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| !from.is("x/a") || to.is("x/b") && port == 80),
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}
",
                ),
                Expect(|_, _, _| true),
            ],
        ),
        case(
            "policies stop being enforced once deleted",
            vec![
                Apply(DENY_INGRESS_X),
                Expect(|_, to, _| to.ns != "x"),
                Kubectl(&["delete", "networkpolicy", "-n", "x", "deny-ingress"]),
                Expect(|_, _, _| true),
            ],
        ),
        case(
            "egress to a CIDR (a pod's /32)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{ip:y/b}/32'}}]}]
",
                ),
                Expect(|from, to, _| !from.is("x/a") || to.is("y/b")),
            ],
        ),
        case(
            "egress to a CIDR with an except",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-cidr-except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{cluster}', except: ['{ip:y/b}/32']}}]}]
",
                ),
                Expect(|from, to, _| !from.is("x/a") || !to.is("y/b")),
            ],
        ),
        case(
            "an address in one block's except and another block is allowed",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-cidr-except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{cluster}', except: ['{ip:y/b}/32']}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-to-yb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{ip:y/b}/32'}}], ports: [{port: 80}]}]
",
                ),
                Expect(|from, to, port| !from.is("x/a") || !to.is("y/b") || port == 80),
            ],
        ),
        case(
            "ingress from a CIDR",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: '{ip:z/c}/32'}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.is("z/c"))),
            ],
        ),
        case(
            "ingress and egress of one pod controlled independently",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-deny-ingress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]
",
                ),
                Expect(|from, to, _| !to.is("x/a") && (!from.is("x/a") || to.ns == "y")),
            ],
        ),
        case(
            "namespaceSelector on the default name label (matchLabels)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-y-by-name, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}}]}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns == "y")),
            ],
        ),
        case(
            "namespaceSelector on the default name label (matchExpressions)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-not-from-y-by-name, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ['y']}]}}]
",
                ),
                Expect(|from, to, _| to_xa(from, to, from.ns != "y")),
            ],
        ),
        case(
            "ingress port ranges (endPort)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]
    ports: [{port: 79, endPort: 80}]
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: 81, endPort: 1000}]
",
                ),
                Expect(|from, to, port| {
                    to_xa(from, to, from.ns == "y" && port == 80 || from.ns == "z" && port == 81)
                }),
            ],
        ),
        case(
            "egress port ranges (endPort)",
            vec![
                Apply(
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-egress-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 81, endPort: 90}]}]
",
                ),
                Expect(|from, _, port| !from.is("x/a") || port == 81),
            ],
        ),
    ]
}

/// Whether a case changed labels (so the harness puts them back after it).
fn relabels(case: &Case) -> bool {
    case.steps
        .iter()
        .any(|s| matches!(s, Kubectl(args) if args[0] == "label"))
}

fn run_case(cluster: &ClusterLab, matrix: &Matrix, case: &Case) {
    for (i, step) in case.steps.iter().enumerate() {
        let done = match step {
            Apply(manifest) => {
                cluster.apply(&matrix.render(manifest).replace("{cluster}", CLUSTER_CIDR))
            }
            Kubectl(args) => cluster.kubectl_ok(args).map(drop),
            Expect(allowed) => matrix
                .settle(cluster, &Truth::expected(allowed), Duration::from_secs(20))
                .map(drop),
        };
        if let Err(e) = done {
            panic!("case {:?}, step {}: {e:#}", case.name, i + 1);
        }
    }
}

/// Deletes every policy and puts the labels back, then waits for the open matrix.
fn reset(cluster: &ClusterLab, matrix: &Matrix, relabelled: bool) {
    cluster
        .kubectl_ok(&["delete", "networkpolicy", "--all", "--all-namespaces"])
        .unwrap();
    if relabelled {
        for ns in ["x", "y", "z"] {
            cluster
                .kubectl_ok(&["label", "namespace", ns, "extra-"])
                .unwrap();
            cluster
                .kubectl_ok(&["label", "pods", "--all", "-n", ns, "extra-"])
                .unwrap();
        }
    }
    matrix
        .settle(
            cluster,
            &Truth::expected(|_, _, _| true),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("reset: {e:#}"));
}

#[test]
fn reachability_matrix() {
    require_privileges!();
    let cluster = ClusterLab::start(2).unwrap();
    let matrix = Matrix::create(&cluster).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    matrix
        .settle(
            &cluster,
            &Truth::expected(|_, _, _| true),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("no policy: {e:#}"));
    let cases = cases();
    assert!(cases.len() >= 25);
    for case in &cases {
        let started = std::time::Instant::now();
        run_case(&cluster, &matrix, case);
        reset(&cluster, &matrix, relabels(case));
        eprintln!("{:<75} {:.1} s", case.name, started.elapsed().as_secs_f64());
    }
}

/// Policies apply to the backend pod after Service translation: a client's connection to a
/// ClusterIP is judged at the backend's ingress and the client's egress as one to the backend.
#[test]
fn policies_apply_to_service_backends() {
    require_privileges!();
    let cluster = ClusterLab::start(2).unwrap();
    let matrix = Matrix::create(&cluster).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    cluster
        .apply(
            "
apiVersion: v1
kind: Service
metadata: {name: svc-a, namespace: x}
spec:
  selector: {pod: a}
  ports: [{port: 8080, targetPort: serve-80-tcp}]
",
        )
        .unwrap();
    let service = cluster
        .kubectl_json(&["get", "service", "-n", "x", "svc-a", "-o", "json"])
        .unwrap();
    let cluster_ip: std::net::Ipv4Addr = service["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let through_service = [(cluster_ip, 8080)];
    let settles = |from: &str, reachable: bool| {
        apiary_tests::cluster::wait(
            &format!("{from} → svc-a: {reachable}"),
            Duration::from_secs(30),
            || {
                (matrix.reaches(&cluster, from, &through_service).ok()? == [reachable])
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    };
    settles("x/c", true);

    // The backend admits only x/b: x/c's connection to the ClusterIP is dropped at x/a.
    cluster
        .apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
",
        )
        .unwrap();
    settles("x/c", false);
    settles("x/b", true);

    // y/c may send only to x/a's address: the Service's address is no obstacle.
    cluster
        .apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: yc-to-xa, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: c}}
  egress: [{to: [{ipBlock: {cidr: '{ip:x/a}/32'}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-yc, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: c}}}]}]
"
            .replace("{ip:x/a}", &matrix.ip("x/a").to_string())
            .as_str(),
        )
        .unwrap();
    settles("y/c", true);
    // Its egress to the pod's port 81 (not through the Service) is not allowed.
    let direct = matrix
        .reaches(
            &cluster,
            "y/c",
            &[(matrix.ip("x/a"), 81), (matrix.ip("x/a"), 80)],
        )
        .unwrap();
    assert_eq!(direct, [false, true]);
}
