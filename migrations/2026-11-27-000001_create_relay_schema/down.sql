DROP TABLE document_permissions;
DROP TABLE snapshots;
DROP TABLE operations;
DROP TABLE documents;
