-- The version of a document's last committed operation, kept on the
-- document row. An append advances it with a compare-and-set on this one
-- row (`head = expected`), so two writers of the same version serialize on
-- the row lock and exactly one wins, without a lookup in the operation log.
ALTER TABLE documents ADD COLUMN head BIGINT NOT NULL DEFAULT 0 CHECK (head >= 0);

UPDATE documents d
   SET head = o.head
  FROM (SELECT document_id, MAX(version) AS head FROM operations GROUP BY document_id) o
 WHERE o.document_id = d.id;
