# One container for sharded exploration: the iommu-sim CLI built in release mode on the
# official Swift image. The Kubernetes Indexed Job (deploy/kubernetes/explore-job.yaml) and
# the CI matrix (.github/workflows/explore.yml) both run it.
FROM swift:6.3-noble AS build
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product iommu-sim && cp "$(swift build -c release --show-bin-path)/iommu-sim" /usr/local/bin/ \
    && cp -R "$(swift build -c release --show-bin-path)/SwiftIOMMU_Simulation.resources" /usr/local/bin/

FROM swift:6.3-noble-slim
COPY --from=build /usr/local/bin/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/iommu-sim"]
