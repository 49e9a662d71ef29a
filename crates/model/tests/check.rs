//! Exhaustive checks of the protocol model: the target design holds every
//! property, today's 1-of-1 configuration has its documented
//! counterexamples, and every property is broken by some mutation.

use sesphr_model::names::*;
use sesphr_model::{Action, Bound, Config, FRIEND, GrantKind, Mutation, Outcome, Protocol};

fn check(config: Config) -> Outcome {
    let out = Protocol::new(config, Bound::from_env()).check();
    println!("{}", out.summary());
    out
}

fn assert_holds(out: &Outcome, props: &[&str]) {
    for p in props {
        if let Some(trace) = out.discovery(p) {
            panic!("{p} fails in {}:\n{trace}", out.summary());
        }
    }
}

#[test]
fn target_design_holds_every_property() {
    let out = check(Config::target());
    assert_holds(&out, &SAFETY);
    assert!(
        out.discovery(LIVENESS).is_some(),
        "no granted read completes"
    );
}

#[test]
fn two_of_two_holds_every_safety_property() {
    let out = check(Config::two_of_two());
    assert_holds(&out, &SAFETY);
    // One corrupt node of two answers garbage: the honest grantee verifies,
    // rejects it and cannot reach t = 2 (denial of service, never a wrong key).
    assert!(out.discovery(LIVENESS).is_none());
    let live = check(Config {
        corrupt_nodes: 0,
        ..Config::two_of_two()
    });
    assert_holds(&live, &SAFETY);
    assert!(
        live.discovery(LIVENESS).is_some(),
        "no granted read completes"
    );
}

#[test]
fn current_code_has_the_documented_counterexamples() {
    let out = check(Config::current_code());
    for (p, trace) in &out.discoveries {
        println!("current code, {p}:\n{trace}");
    }
    // Any loss of entitlement without a rotation (revoke --no-rotate,
    // expiry, deactivation) leaves the epoch open to that SRS + grantee.
    for p in [NO_DECRYPT_WITHOUT_GRANT, EXPIRED, DISABLED] {
        assert!(out.discovery(p).is_some(), "{p} should fail at t = 1");
    }
    // The documented one: a record written after revoking the friend, before
    // any rotation, in the epoch the friend held kfrags for.
    let model = Protocol::new(Config::current_code(), Bound::from_env());
    let path = [
        Action::Enrol(FRIEND),
        Action::Grant(
            FRIEND,
            GrantKind {
                not_before: false,
                expires: false,
            },
        ),
        Action::Revoke(FRIEND),
        Action::DeliverDelete(0, FRIEND),
        Action::Upload,
    ];
    let trace = model
        .violated_by(NO_DECRYPT_WITHOUT_GRANT, &path)
        .expect("SRS + former grantee at t = 1 reads the revoked epoch");
    println!("current code, revoke without rotation:\n{trace}");
    // With the rotation `sesphr revoke` does by default, the record is safe.
    let mut rotated = path.to_vec();
    rotated.insert(4, Action::Rotate);
    assert!(
        model
            .violated_by(NO_DECRYPT_WITHOUT_GRANT, &rotated)
            .is_none()
    );
    // Revocation is followed by rotation, so later epochs stay out of reach.
    assert_holds(
        &out,
        &[
            REVOKE_ROTATE,
            WRONG_KEY,
            NO_DATA_AT_SRS,
            AUDITED,
            PIN,
            RECOVERY,
        ],
    );
    // The one SRS is the corrupt one, so honest reads fail closed (cfrags
    // that do not verify); with an honest SRS they complete.
    assert!(out.discovery(LIVENESS).is_none());
    let honest = check(Config {
        corrupt_nodes: 0,
        ..Config::current_code()
    });
    assert_holds(&honest, &SAFETY);
    assert!(honest.discovery(LIVENESS).is_some());
}

fn breaks(config: Config, m: Mutation, property: &'static str) {
    let out = check(config.with(m));
    let trace = out
        .discovery(property)
        .unwrap_or_else(|| panic!("{m:?} should break {property}"));
    println!("{m:?} breaks {property}:\n{trace}");
}

#[test]
fn srs_skipping_policy_lets_a_revoked_grantee_read() {
    breaks(
        Config::target(),
        Mutation::SrsSkipsPolicy,
        NO_DECRYPT_WITHOUT_GRANT,
    );
}

#[test]
fn a_node_missing_its_delete_is_harmless_only_while_it_asks_policy() {
    // Revoke the friend; node 1 gets its delete, node 2's is still in
    // flight; a record is written after the revocation.
    let path = [
        Action::Enrol(FRIEND),
        Action::Grant(
            FRIEND,
            GrantKind {
                not_before: false,
                expires: false,
            },
        ),
        Action::Revoke(FRIEND),
        Action::DeliverDelete(1, FRIEND),
        Action::Upload,
    ];
    let honest = Protocol::new(Config::target(), Bound::from_env());
    assert!(
        honest
            .violated_by(NO_DECRYPT_WITHOUT_GRANT, &path)
            .is_none()
    );
    let broken = Protocol::new(
        Config::target().with(Mutation::SrsSkipsPolicy),
        Bound::from_env(),
    );
    let trace = broken
        .violated_by(NO_DECRYPT_WITHOUT_GRANT, &path)
        .expect("the stale node's cfrag + the corrupt node's share reach t = 2");
    println!("SrsSkipsPolicy, stale node after revoke:\n{trace}");
}

#[test]
fn t_minus_one_cfrags_suffice_breaks_revocation() {
    breaks(
        Config::target(),
        Mutation::ThresholdOffByOne,
        NO_DECRYPT_WITHOUT_GRANT,
    );
}

#[test]
fn rotating_to_revoked_grantees_breaks_forward_secrecy_at_t1() {
    breaks(
        Config::current_code(),
        Mutation::RotateToRevoked,
        REVOKE_ROTATE,
    );
}

#[test]
fn at_t2_revocation_needs_no_rotation() {
    // Lying rotation is caught by the fan-out property only: t − 1 kfrag
    // shares are useless and honest nodes ask AccessPolicy.
    let out = check(Config::target().with(Mutation::RotateToRevoked));
    assert_holds(&out, &[REVOKE_ROTATE, NO_DECRYPT_WITHOUT_GRANT]);
    assert!(out.discovery(REVOKE_FANOUT).is_some());
}

#[test]
fn not_before_without_rotation_exposes_older_records() {
    breaks(
        Config::target(),
        Mutation::NotBeforeWithoutRotation,
        NOT_BEFORE,
    );
}

#[test]
fn cloud_ignoring_not_before_is_covered_by_rotation() {
    let out = check(Config::target().with(Mutation::CloudIgnoresNotBefore));
    assert_holds(&out, &[NOT_BEFORE, NO_DECRYPT_WITHOUT_GRANT]);
}

#[test]
fn expiry_off_by_one_yields_after_expiry() {
    breaks(Config::target(), Mutation::ExpiryOffByOne, EXPIRED);
}

#[test]
fn skipping_cfrag_verification_accepts_a_wrong_key() {
    breaks(Config::target(), Mutation::GranteeSkipsVerify, WRONG_KEY);
}

#[test]
fn sending_the_record_to_the_srs_is_caught() {
    breaks(
        Config::target(),
        Mutation::ClientSendsRecordToSrs,
        NO_DATA_AT_SRS,
    );
}

#[test]
fn unaudited_reads_are_caught() {
    breaks(Config::target(), Mutation::AuditSkippedOnRead, AUDITED);
}

#[test]
fn verifying_without_the_pin_misses_a_removal() {
    breaks(Config::target(), Mutation::VerifyIgnoresPin, PIN);
}

#[test]
fn ignoring_the_deny_state_lets_a_disabled_user_read() {
    breaks(Config::target(), Mutation::DenyIgnored, DISABLED);
}

#[test]
fn recovery_off_by_one_is_caught() {
    breaks(Config::target(), Mutation::RecoveryOffByOne, RECOVERY);
}

#[test]
fn revoke_forgetting_a_node_is_caught() {
    breaks(Config::target(), Mutation::RevokeForgetsNode, REVOKE_FANOUT);
}

#[test]
fn kfrags_at_one_node_never_complete_a_read() {
    let out = check(Config::target().with(Mutation::GrantToOneNode));
    assert!(
        out.discovery(LIVENESS).is_none(),
        "a read completed with one kfrag share"
    );
}
