-- Before a planned switchover: the old leader's shutdown checkpoint then has little left to write.
CHECKPOINT
