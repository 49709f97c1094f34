ALTER TABLE documents DROP COLUMN head;
