"""Code shared by every advrec service: settings, schemas, dataset loading, the artifact store."""
