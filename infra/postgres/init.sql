-- One PostgreSQL for the stack, one database per service. POSTGRES_DB (amr) is created by the image itself.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
