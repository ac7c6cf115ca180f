//! Protobuf messages of the event framework's examples, tests and benchmarks.
//!
//! The `.proto` files live beside this crate (`users/v1`, `shop/v1`, `bench/v1`) and are
//! compiled at build time by protox and prost-build, with type names enabled, so every message
//! implements `prost::Name` and its full name (`users.v1.UserCreated`) becomes the `ce_type`
//! header.
//!
//! ```
//! use prost::Name;
//! assert_eq!(event_proto::users::v1::UserCreated::full_name(), "users.v1.UserCreated");
//! ```

/// `users.v1`: sign-up events.
pub mod users {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/users.v1.rs"));
    }
}

/// `shop.v1`: orders and payments.
pub mod shop {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
    }
}

/// `bench.v1`: benchmark events.
pub mod bench {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/bench.v1.rs"));
    }
}
