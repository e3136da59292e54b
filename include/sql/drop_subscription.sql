-- Drops the subscription and, through its own connection, its slot on the source.
DROP SUBSCRIPTION IF EXISTS {subscription};
