# Gateway: a static Go binary in an empty image (no base image to pull).
# Build context: examples/kubernaut-lite, after `scripts/prebuild.sh gateway`
# has put the binary in bin/ (GOFLAGS=-cover in its environment instruments it).
FROM scratch
ARG GOFLAGS
COPY bin/gateway /gateway
EXPOSE 8080 9090
USER 65532:65532
ENTRYPOINT ["/gateway"]
