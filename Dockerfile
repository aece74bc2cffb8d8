# mqtt-jwt-proxy: a static binary on an empty base image, run as a
# non-root user. The configuration is mounted at
# /etc/mqtt-jwt-proxy/config.yaml (a ConfigMap, a volume, a bind mount).
#
#   docker build --build-arg VERSION=v1.0.0 -t mqtt-jwt-proxy .
#   docker run -v "$PWD/config.yaml:/etc/mqtt-jwt-proxy/config.yaml:ro" -p 1883:1883 -p 9100:9100 mqtt-jwt-proxy

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that their layer is reused while only the code changes.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
# CGO_ENABLED=0: a static binary, needing no libc in the image. -trimpath
# keeps build paths out of it.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mqtt-jwt-proxy ./cmd/mqtt-jwt-proxy

FROM scratch
# CA certificates, for JWKS endpoints served over https.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/mqtt-jwt-proxy /usr/local/bin/mqtt-jwt-proxy
# A numeric user, so that Kubernetes' runAsNonRoot can verify it; 65532 is
# the conventional "nonroot". Both ports are above 1024: no capability needed.
USER 65532:65532
# 1883: MQTT clients. 9100: the admin endpoint (metrics.bind), for
# Prometheus and the health probes.
EXPOSE 1883 9100
ENTRYPOINT ["/usr/local/bin/mqtt-jwt-proxy", "-config", "/etc/mqtt-jwt-proxy/config.yaml"]
