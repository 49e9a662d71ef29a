//! The PostgreSQL store passes the checks every store passes, on a real
//! server.

use sesphr_domain::pg::PgConfig;
use sesphr_identity::Role;
use sesphr_testkit::Postgres;

use super::PgStore;
use crate::Store;
use crate::store_conformance::{self, user};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn pg_store_conforms_and_reopens() {
    let server = Postgres::start().unwrap();
    let url = server.create_database("conformance").unwrap();
    let rt = runtime();
    let config = PgConfig::new(format!("{url}?sslmode=disable"));
    let s = PgStore::open(&config, rt.handle().clone()).unwrap();
    store_conformance::check(&s);

    // A second replica (or a restart) migrates nothing and sees it all.
    let again = PgStore::open(&config, rt.handle().clone()).unwrap();
    assert_eq!(again.users_count().unwrap(), s.users_count().unwrap());
    assert_eq!(again.user("bob").unwrap(), Some(user("bob", Role::Doctor)));
    assert_eq!(
        *again.service_secret("oprf").unwrap(),
        *s.service_secret("oprf").unwrap()
    );
}
