-- Relay's schema: documents, their operations (the durable log, hash
-- partitioned by document as the deployment document intends), snapshots
-- and per-document permissions.

CREATE TABLE documents (
    id UUID PRIMARY KEY,
    owner_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- One row per committed operation. The seed's columns are kept and derived
-- from the delta: operation_type (insert, delete, format, mixed, noop),
-- position (where the first change is), content (inserted text),
-- attributes (formatting applied), vector_clock (the server version the op
-- was rebased onto and the client's seq). `delta` is the operation itself
-- (PROTOCOL.md wire form); `version` orders the log; (actor_id, client_id,
-- seq) identifies an operation forever (exactly-once).
CREATE TABLE operations (
    id UUID NOT NULL,
    document_id UUID NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    actor_id UUID NOT NULL,
    client_id VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 0),
    operation_type VARCHAR(20) NOT NULL,
    position INTEGER NOT NULL,
    content TEXT,
    attributes JSONB,
    vector_clock JSONB NOT NULL,
    delta JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (document_id, version),
    CONSTRAINT operations_idempotency UNIQUE (document_id, actor_id, client_id, seq),
    CONSTRAINT operations_id_unique UNIQUE (document_id, id),
    CONSTRAINT fk_document FOREIGN KEY (document_id) REFERENCES documents(id) ON DELETE CASCADE
) PARTITION BY HASH (document_id);

CREATE TABLE operations_p0 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 0);
CREATE TABLE operations_p1 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 1);
CREATE TABLE operations_p2 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 2);
CREATE TABLE operations_p3 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 3);
CREATE TABLE operations_p4 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 4);
CREATE TABLE operations_p5 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 5);
CREATE TABLE operations_p6 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 6);
CREATE TABLE operations_p7 PARTITION OF operations FOR VALUES WITH (MODULUS 8, REMAINDER 7);

CREATE INDEX idx_operations_created_at ON operations (created_at);

CREATE TABLE snapshots (
    document_id UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    version BIGINT NOT NULL CHECK (version >= 0),
    content JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (document_id, version)
);

CREATE TABLE document_permissions (
    document_id UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    user_id UUID NOT NULL,
    role VARCHAR(10) NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    PRIMARY KEY (document_id, user_id)
);
