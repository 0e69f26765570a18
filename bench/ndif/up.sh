#!/bin/bash
# Bring up a real NDIF stack on loopback (the `ndif` package 0.1.2: its API under
# gunicorn, Redis, Postgres for API-key auth, a Ray head and NDIF's controller) for
# bench/ndif/probe.py. What was run on the development machine, step by step; CPU only,
# so no model can be deployed (NDIF's model actors need CUDA). Needs: python3.11 with
# lenstui's venv, redis-server and postgresql (Debian packages), and
#   python3.11 -m venv V && echo "$PWD/.venv/lib/python3.11/site-packages" > V/lib/python3.11/site-packages/project.pth
#   V/bin/pip install --ignore-requires-python --no-deps ndif==0.1.2   # (it says >=3.12; it compiles on 3.11)
#   V/bin/pip install fastapi "uvicorn[standard]" gunicorn python-multipart redis boto3 python-dotenv click asyncpg psutil "ray[default]"
set -euo pipefail
V=${V:?the venv above}; RUN=${RUN:-/tmp/ndif-run}; mkdir -p "$RUN"; cd "$RUN"
export PATH=$V/bin:$PATH NDIF_REDIS_URL=redis://127.0.0.1:6391 NDIF_API_PORT=8091 NDIF_API_URL=http://127.0.0.1:8091 \
  NDIF_POSTGRES_URL=postgresql://postgres:pg@127.0.0.1:5439/ndif NDIF_OBJECT_STORE_URL=http://127.0.0.1:9099 \
  NDIF_RAY_ADDRESS=ray://127.0.0.1:20011 RAY_ADDRESS=127.0.0.1:6395 GRPC_ENABLE_FORK_SUPPORT=0
setsid redis-server --port 6391 --save "" > redis.log 2>&1 &
mkdir -p pg && chown postgres pg && runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D pg > /dev/null
runuser -u postgres -- setsid /usr/lib/postgresql/15/bin/postgres -D pg -p 5439 -k "$RUN/pg" > pg.log 2>&1 &
sleep 3
# The tables NDIF's auth query reads (services/api/auth.py), one user and one key.
runuser -u postgres -- psql -h "$RUN/pg" -p 5439 -c "CREATE DATABASE ndif;"
runuser -u postgres -- psql -h "$RUN/pg" -p 5439 -d ndif -c "
CREATE TABLE users (user_id uuid PRIMARY KEY, email text);
CREATE TABLE keys (key_id uuid PRIMARY KEY, user_id uuid REFERENCES users(user_id));
CREATE TABLE user_tags (user_tag_id serial PRIMARY KEY, name text);
CREATE TABLE key_user_tag_assignments (key_id uuid REFERENCES keys(key_id), user_tag_id int REFERENCES user_tags(user_tag_id));
INSERT INTO users VALUES ('11111111-2222-4333-8444-555555555555', 'lenstui-test@example.org');
INSERT INTO keys VALUES ('7c9e6679-7425-40de-944b-e07fc1f90ae7', '11111111-2222-4333-8444-555555555555');
ALTER USER postgres PASSWORD 'pg';"
# NDIF's controller reads the cluster through Ray's dashboard: it must be on.
ray start --head --resources="$(python -m ndif.services.ray.resources --head)" --port=6395 --ray-client-server-port=20011 \
  --object-manager-port=8086 --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8275 \
  --dashboard-agent-grpc-port=52376 --dashboard-agent-listen-port=52375 --metrics-export-port=8090 --temp-dir="$RUN/ray" --num-cpus=2
python -m ndif.services.ray.deployments.controller.controller
setsid gunicorn --config python:ndif.services.api.gunicorn_conf ndif.services.api.app:app > api.log 2>&1 &
echo "NDIF API on http://127.0.0.1:8091 (give its dispatcher a minute to reach Ray)"
