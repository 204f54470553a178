use super::*;
use meshca_core::acl::{Access, Permission};
use meshca_core::SystemClock;
use meshca_store::MemoryStore;

fn acl() -> (Arc<MemoryStore>, Acl) {
    let store = Arc::new(MemoryStore::new());
    let acl = Acl::open(store.clone(), Arc::new(SystemClock)).unwrap();
    (store, acl)
}

fn secret(s: &SecretString) -> &str {
    s.expose_secret()
}

#[test]
fn bootstrap_works_once_and_the_token_manages_everything() {
    let (store, acl) = acl();
    assert_eq!(acl.bootstrapped_at(), None);
    let t = acl.bootstrap(None).unwrap();
    let resolved = acl.resolve(secret(&t.secret_id)).unwrap();
    assert_eq!(resolved.accessor_id, t.record.accessor_id);
    assert!(resolved
        .authorizer
        .allows(&Permission::operator(Access::Write)));
    assert!(resolved.authorizer.allows(&Permission::acl(Access::Write)));
    let again = acl.bootstrap(None).unwrap_err();
    assert!(
        matches!(again, AclError::BootstrapDone(i) if i == t.record.create_index),
        "{again}"
    );
    // The state survives a reload from the store.
    let reopened = Acl::open(store, Arc::new(SystemClock)).unwrap();
    assert!(reopened.resolve(secret(&t.secret_id)).is_ok());
    assert!(matches!(
        reopened.bootstrap(None),
        Err(AclError::BootstrapDone(_))
    ));
}

#[test]
fn secrets_are_stored_only_as_hashes() {
    let (store, acl) = acl();
    let t = acl.bootstrap(None).unwrap();
    let c = acl
        .create_token(NewToken {
            description: "web".into(),
            service_identities: vec!["web".into()],
            ..NewToken::default()
        })
        .unwrap();
    for (key, bytes) in store.scan("acl/").unwrap() {
        let text = String::from_utf8_lossy(&bytes);
        for s in [secret(&t.secret_id), secret(&c.secret_id)] {
            assert!(!text.contains(s), "{key} holds a secret");
        }
    }
}

#[test]
fn unknown_secrets_resolve_to_not_found() {
    let (_, acl) = acl();
    acl.bootstrap(None).unwrap();
    for wrong in ["", "x", &Uuid::new_v4().to_string(), &"a".repeat(10_000)] {
        assert!(matches!(acl.resolve(wrong), Err(AclError::TokenNotFound)));
    }
}

#[test]
fn a_token_gets_its_policies_and_service_identities() {
    let (_, acl) = acl();
    let p = acl
        .write_policy(
            None,
            NewPolicy {
                name: "ops-read".into(),
                rules: r#"operator = "read""#.into(),
                ..NewPolicy::default()
            },
        )
        .unwrap();
    let t = acl
        .create_token(NewToken {
            policies: vec![PolicyRef::Name("ops-read".into())],
            service_identities: vec!["web".into()],
            ..NewToken::default()
        })
        .unwrap();
    assert_eq!(t.record.policies, vec![p.id]);
    let a = &acl.resolve(secret(&t.secret_id)).unwrap().authorizer;
    assert!(a.allows(&Permission::operator(Access::Read)));
    assert!(!a.allows(&Permission::operator(Access::Write)));
    assert!(a.allows(&Permission::service(Access::Write, "web")));
    assert!(!a.allows(&Permission::service(Access::Write, "db")));
    // Deleting the policy takes what it granted away from the token.
    acl.delete_policy(p.id).unwrap();
    let a = &acl.resolve(secret(&t.secret_id)).unwrap().authorizer;
    assert!(!a.allows(&Permission::operator(Access::Read)));
    assert!(a.allows(&Permission::service(Access::Write, "web")));
}

#[test]
fn invalid_requests_are_refused_and_write_nothing() {
    let (store, acl) = acl();
    let before = store.index().unwrap();
    let bad_policies = [
        ("", "{}"),
        ("has space", "{}"),
        ("ok", r#"{"keyring":"write"}"#),
        ("ok", "{"),
    ];
    for (name, rules) in bad_policies {
        let r = acl.write_policy(
            None,
            NewPolicy {
                name: name.into(),
                rules: rules.into(),
                ..NewPolicy::default()
            },
        );
        assert!(
            matches!(r, Err(AclError::Invalid(_))),
            "{name} {rules}: {r:?}"
        );
    }
    let bad_tokens = [
        NewToken {
            policies: vec![PolicyRef::Name("absent".into())],
            ..NewToken::default()
        },
        NewToken {
            policies: vec![PolicyRef::Id(Uuid::new_v4())],
            ..NewToken::default()
        },
        NewToken {
            service_identities: vec!["Not A Name".into()],
            ..NewToken::default()
        },
        NewToken {
            secret_id: Some(SecretString::from("not-a-uuid")),
            ..NewToken::default()
        },
    ];
    for t in bad_tokens {
        let r = acl.create_token(t);
        assert!(matches!(r, Err(AclError::Invalid(_))), "{r:?}");
    }
    assert!(acl.delete_policy(GLOBAL_MANAGEMENT_ID).is_err());
    assert!(acl
        .write_policy(
            Some(GLOBAL_MANAGEMENT_ID),
            NewPolicy {
                name: "x".into(),
                ..NewPolicy::default()
            }
        )
        .is_err());
    assert_eq!(
        store.index().unwrap(),
        before,
        "a refused request wrote something"
    );
}

#[test]
fn policy_names_are_unique_and_a_secret_is_used_once() {
    let (_, acl) = acl();
    let new = || NewPolicy {
        name: "p".into(),
        rules: "{}".into(),
        ..NewPolicy::default()
    };
    let p = acl.write_policy(None, new()).unwrap();
    assert!(matches!(
        acl.write_policy(None, new()),
        Err(AclError::Invalid(_))
    ));
    // Updating keeps the ID and the create index.
    let updated = acl
        .write_policy(
            Some(p.id),
            NewPolicy {
                rules: r#"{"mesh":"write"}"#.into(),
                ..new()
            },
        )
        .unwrap();
    assert_eq!((updated.id, updated.create_index), (p.id, p.create_index));
    assert!(updated.modify_index > p.modify_index);
    let s = Uuid::new_v4().to_string();
    let with = || NewToken {
        secret_id: Some(SecretString::from(s.clone())),
        ..NewToken::default()
    };
    acl.create_token(with()).unwrap();
    assert!(matches!(
        acl.create_token(with()),
        Err(AclError::Invalid(_))
    ));
}

#[test]
fn the_initial_management_token_is_created_once_and_counts_as_bootstrap() {
    let (store, acl) = acl();
    let s = SecretString::from(Uuid::new_v4().to_string());
    assert!(acl.ensure_initial_management(&s).unwrap());
    assert!(!acl.ensure_initial_management(&s).unwrap());
    assert!(acl.bootstrapped_at().is_some());
    assert!(matches!(
        acl.bootstrap(None),
        Err(AclError::BootstrapDone(_))
    ));
    let reopened = Acl::open(store, Arc::new(SystemClock)).unwrap();
    assert!(!reopened.ensure_initial_management(&s).unwrap());
    assert_eq!(reopened.tokens().len(), 1);
}

#[test]
fn deleted_tokens_stop_resolving() {
    let (_, acl) = acl();
    let t = acl.create_token(NewToken::default()).unwrap();
    acl.delete_token(t.record.accessor_id).unwrap();
    assert!(matches!(
        acl.resolve(secret(&t.secret_id)),
        Err(AclError::TokenNotFound)
    ));
    assert!(matches!(
        acl.delete_token(t.record.accessor_id),
        Err(AclError::NotFound(_))
    ));
}

#[test]
fn acl_writes_touch_only_acl_records() {
    let (store, acl) = acl();
    let mut ca = store.watch("ca/");
    ca.borrow_and_update();
    acl.bootstrap(None).unwrap();
    acl.create_token(NewToken::default()).unwrap();
    assert!(!ca.has_changed().unwrap(), "an ACL write woke a CA watcher");
    assert!(store.scan("ca/").unwrap().is_empty());
}
