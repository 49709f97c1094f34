//! The tables of `migrations/`, for diesel's query builder.

diesel::table! {
    documents (id) {
        id -> Uuid,
        owner_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        head -> Int8,
    }
}

diesel::table! {
    operations (document_id, version) {
        id -> Uuid,
        document_id -> Uuid,
        version -> Int8,
        actor_id -> Uuid,
        client_id -> Varchar,
        seq -> Int8,
        operation_type -> Varchar,
        position -> Int4,
        content -> Nullable<Text>,
        attributes -> Nullable<Jsonb>,
        vector_clock -> Jsonb,
        delta -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    snapshots (document_id, version) {
        document_id -> Uuid,
        version -> Int8,
        content -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    document_permissions (document_id, user_id) {
        document_id -> Uuid,
        user_id -> Uuid,
        role -> Varchar,
    }
}

diesel::joinable!(operations -> documents (document_id));
diesel::joinable!(snapshots -> documents (document_id));
diesel::joinable!(document_permissions -> documents (document_id));
diesel::allow_tables_to_appear_in_same_query!(
    documents,
    operations,
    snapshots,
    document_permissions
);
