"""modelroute storage: the etcd config store, the SQL stores and their migrations."""
