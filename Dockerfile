# mqtt-jwt-proxy: a static binary on an empty base image, run as a
# non-root user. The configuration is mounted at
# /etc/mqtt-jwt-proxy/config.yaml (a ConfigMap, a volume, a bind mount),
# where every command finds it ($MQTT_JWT_PROXY_CONFIG). The image runs
# serve by default, and any command when given one:
#
#   docker build --build-arg VERSION=v1.0.0 -t mqtt-jwt-proxy .
#   docker run -v "$PWD/config.yaml:/etc/mqtt-jwt-proxy/config.yaml:ro" -p 1883:1883 -p 9100:9100 mqtt-jwt-proxy
#   docker run -v "$PWD/config.yaml:/etc/mqtt-jwt-proxy/config.yaml:ro" mqtt-jwt-proxy check
#   docker run mqtt-jwt-proxy token -secret "$SECRET" -sub device-1
#
# A file written for one machine binds 127.0.0.1, which nothing outside
# the container reaches; MQTT_JWT_PROXY_BIND_HOST moves every listener and
# metrics.bind to another address, such as all interfaces:
#
#   docker run -v "$PWD/configs/quickstart.yaml:/etc/mqtt-jwt-proxy/config.yaml:ro" -e MQTT_JWT_PROXY_BIND_HOST=0.0.0.0 -p 1883:1883 mqtt-jwt-proxy

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
ENV MQTT_JWT_PROXY_CONFIG=/etc/mqtt-jwt-proxy/config.yaml
# The command alone: docker run's arguments replace CMD, so that check,
# version, token, keygen and verify run as they are named.
ENTRYPOINT ["/usr/local/bin/mqtt-jwt-proxy"]
CMD ["serve"]
