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
//!
//! The build also writes the files' descriptors, [`FILE_DESCRIPTOR_SET`], which proto3 JSON
//! (`application/json`) needs at run time to know the messages' field names: register them
//! once with `event_core::codec::json::register_file_descriptor_set(FILE_DESCRIPTOR_SET)`.

/// The encoded `google.protobuf.FileDescriptorSet` of this crate's `.proto` files, their
/// imports included and their comments left out, as protox compiled them.
///
/// ```
/// use prost::Message as _;
/// let set = prost_types::FileDescriptorSet::decode(event_proto::FILE_DESCRIPTOR_SET).unwrap();
/// let mut files: Vec<_> = set.file.iter().map(|file| file.name()).collect();
/// files.sort_unstable();
/// assert_eq!(files, ["bench/v1/bench.proto", "shop/v1/orders.proto", "users/v1/users.proto"]);
/// assert!(set.file.iter().all(|file| file.source_code_info.is_none()));
/// ```
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

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
