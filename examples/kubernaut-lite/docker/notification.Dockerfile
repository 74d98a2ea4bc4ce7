# Notification: a static Go binary in an empty image (no base image to pull).
# Build context: examples/kubernaut-lite, after `scripts/prebuild.sh notification`
# has put the binary in bin/ (GOFLAGS=-cover in its environment instruments it).
FROM scratch
ARG GOFLAGS
COPY bin/notification /notification
EXPOSE 8081 9186
USER 65532:65532
ENTRYPOINT ["/notification"]
