//! A compiled `BrokerAuthentication`: its methods in order, and the fall-through rule.
//!
//! The first method for which the credentials are relevant decides; a relevant-but-invalid
//! credential does not fall through (broker-spec §2.2, scenario 12); nothing relevant means
//! denied with 0x87 (scenarios 9, 14). A multi-step exchange continues with the method that
//! started it: the continuation token carries that method's position.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Credentials, Decision, Kind, Method};

pub struct Chain {
    pub name: String,
    methods: Vec<Box<dyn Method>>,
}

impl Chain {
    pub fn new(name: impl Into<String>, methods: Vec<Box<dyn Method>>) -> Chain {
        Chain {
            name: name.into(),
            methods,
        }
    }

    pub fn method_names(&self) -> Vec<&'static str> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    pub async fn authenticate(&self, credentials: &Credentials) -> Decision {
        if credentials.kind == Kind::Continue {
            // [position u8][the method's own continuation]
            let Some((&index, rest)) = credentials.continuation.split_first() else {
                return Decision::deny(0x82, "AUTH without an exchange in progress");
            };
            let Some(method) = self.methods.get(usize::from(index)) else {
                return Decision::deny(0x82, "unknown authentication exchange");
            };
            let mut inner = credentials.clone();
            inner.continuation = Bytes::copy_from_slice(rest);
            return wrap(index, method.authenticate(&inner).await);
        }
        for (index, method) in self.methods.iter().enumerate() {
            match method.authenticate(credentials).await {
                Decision::NotRelevant => continue,
                decision => return wrap(index as u8, decision),
            }
        }
        Decision::not_authorized("no authentication method accepted these credentials")
    }
}

fn wrap(index: u8, decision: Decision) -> Decision {
    match decision {
        Decision::Continue { data, continuation } => {
            let mut c = BytesMut::with_capacity(1 + continuation.len());
            c.put_u8(index);
            c.put_slice(&continuation);
            Decision::Continue {
                data,
                continuation: c.freeze(),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecisionFuture, Grant, Principal};

    /// Answers with a fixed decision and records nothing.
    struct Fixed(&'static str, Decision);

    impl Method for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn authenticate<'a>(&'a self, _: &'a Credentials) -> DecisionFuture<'a> {
            Box::pin(std::future::ready(self.1.clone()))
        }
    }

    fn allow() -> Decision {
        Decision::Allow(Grant {
            principal: Principal::default(),
            expiry: None,
            data: None,
            can_reauthenticate: true,
        })
    }

    fn run(chain: &Chain, c: &Credentials) -> Decision {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(chain.authenticate(c))
    }

    #[test]
    fn first_relevant_method_decides_and_denials_do_not_fall_through() {
        let c = Credentials::connect("c");
        let chain = Chain::new(
            "p",
            vec![
                Box::new(Fixed("A", Decision::NotRelevant)),
                Box::new(Fixed("B", Decision::deny(0x86, "bad"))),
                Box::new(Fixed("C", allow())),
            ],
        );
        assert_eq!(run(&chain, &c), Decision::deny(0x86, "bad"));
        let chain = Chain::new(
            "p",
            vec![
                Box::new(Fixed("A", Decision::NotRelevant)),
                Box::new(Fixed("C", allow())),
            ],
        );
        assert_eq!(run(&chain, &c), allow());
    }

    #[test]
    fn nothing_relevant_is_not_authorized() {
        let chain = Chain::new("p", vec![Box::new(Fixed("A", Decision::NotRelevant))]);
        match run(&chain, &Credentials::connect("c")) {
            Decision::Deny { code, .. } => assert_eq!(code, 0x87),
            other => panic!("{other:?}"),
        }
        let empty = Chain::new("p", vec![]);
        assert!(matches!(
            run(&empty, &Credentials::connect("c")),
            Decision::Deny { code: 0x87, .. }
        ));
    }

    #[test]
    fn continuation_returns_to_the_method_that_started_the_exchange() {
        let chain = Chain::new(
            "p",
            vec![
                Box::new(Fixed("A", Decision::NotRelevant)),
                Box::new(Fixed(
                    "B",
                    Decision::Continue {
                        data: None,
                        continuation: Bytes::from_static(b"step1"),
                    },
                )),
            ],
        );
        let Decision::Continue { continuation, .. } = run(&chain, &Credentials::connect("c"))
        else {
            panic!("expected Continue");
        };
        assert_eq!(&continuation[..], b"\x01step1");
        let mut next = Credentials::connect("c");
        next.kind = Kind::Continue;
        next.continuation = Bytes::from_static(b"\x07");
        assert!(matches!(
            run(&chain, &next),
            Decision::Deny { code: 0x82, .. }
        ));
        next.continuation = Bytes::new();
        assert!(matches!(
            run(&chain, &next),
            Decision::Deny { code: 0x82, .. }
        ));
    }
}
