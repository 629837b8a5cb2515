# agentvm for Nix users:
#
#   nix run .#                          agentvm itself (packages.default)
#   nix build .#guest-image             vmlinux, initrd.img, cmdline for
#   agentvm boot --image result …       `agentvm boot --image`
#
# No flake.lock is committed: it was written where there is no Nix binary
# cache or network to resolve one. The first `nix build` writes it (pin it
# with `nix flake lock`). nixpkgs is pinned by branch instead: nixos-25.11,
# the first release whose rustc (1.91) builds Cargo.lock (uuid needs 1.89,
# the workspace 1.85); nixos-24.11's 1.82 cannot.
{
  description = "agentvm: a KVM hypervisor for AI coding agents, its guest kernel and guest image";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      # agentvm drives x86_64 KVM only.
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      inherit (nixpkgs) lib;

      version = (lib.importTOML ./Cargo.toml).workspace.package.version;

      # The Rust workspace, without target/ and the rest of the checkout.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./.cargo
          ./clippy.toml
          ./benches
          ./crates
          ./guest
          # A workspace member (the fuzz targets; not built here).
          ./fuzz/Cargo.toml
          ./fuzz/src
          ./fuzz/fuzz_targets
        ];
      };

      # The command line `agentvm image build` writes, read from its source so
      # the two never differ (guest/image/src/image.rs, DEFAULT_CMDLINE).
      defaultCmdline =
        let
          re = " *pub const DEFAULT_CMDLINE: &str = \"(.*)\";";
          lines = builtins.split "\n" (builtins.readFile ./guest/image/src/image.rs);
          hits = builtins.filter (l: builtins.isString l && builtins.match re l != null) lines;
        in
        builtins.head (builtins.match re (builtins.head hits));

      # The CLI. Wrapped so `--share` finds nixpkgs' virtiofsd (the Rust one,
      # which agentvm otherwise looks for in ~/.cargo/bin). It carries the
      # guest agent `agentvm image build` puts in images: its build script
      # embeds the static agentvm-guest below instead of building one.
      agentvm = pkgs.rustPlatform.buildRustPackage {
        pname = "agentvm";
        inherit version src;
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = [
          "-p"
          "agentvm"
        ];
        AGENTVM_GUEST_AGENT = "${agentvm-guest}/bin/agentvm-guest";
        nativeBuildInputs = [ pkgs.makeWrapper ];
        # The test suite needs /dev/kvm, QEMU, apt and the network (the rig
        # downloads Debian packages); none of them exist in the build sandbox.
        # CI runs it (.ci/run).
        doCheck = false;
        postInstall = ''
          wrapProgram $out/bin/agentvm \
            --set-default AGENTVM_VIRTIOFSD ${pkgs.virtiofsd}/bin/virtiofsd
        '';
        meta = {
          description = "KVM hypervisor for AI coding agents";
          license = lib.licenses.asl20;
          mainProgram = "agentvm";
          platforms = [ system ];
        };
      };

      # The guest agent, PID 1 of the initramfs: static (musl), as the
      # initramfs has no libc.
      agentvm-guest = pkgs.pkgsStatic.rustPlatform.buildRustPackage {
        pname = "agentvm-guest";
        inherit version src;
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = [
          "-p"
          "agentvm-guest"
          "--bin"
          "agentvm-guest"
        ];
        # Its tests spawn processes on PTYs and Unix sockets; CI runs them.
        doCheck = false;
        meta = {
          description = "agentvm guest agent (static)";
          license = lib.licenses.asl20;
          mainProgram = "agentvm-guest";
        };
      };

      # The guest kernel: nixpkgs' Linux 6.12 source built by the same script
      # as without Nix (guest/kernel/build.sh): allnoconfig + microvm.config,
      # olddefconfig, a check that Kconfig kept every option of the fragment,
      # then `make vmlinux`. $out holds vmlinux (PVH ELF) and config.
      guest-kernel = pkgs.stdenv.mkDerivation {
        pname = "agentvm-guest-kernel";
        inherit (pkgs.linux_6_12) version src;
        nativeBuildInputs = with pkgs; [
          bc
          bison
          flex
          perl
          python3
          openssl
          elfutils # libelf for objtool
        ];
        # The kernel brings its own flags; the wrapper's hardening breaks it.
        hardeningDisable = [ "all" ];
        postPatch = "patchShebangs scripts tools";
        dontConfigure = true;
        buildPhase = ''
          runHook preBuild
          AGENTVM_KERNEL_JOBS=$NIX_BUILD_CORES bash ${./guest/kernel}/build.sh "$PWD" "$out"
          runHook postBuild
        '';
        dontInstall = true; # build.sh wrote $out
        dontFixup = true; # vmlinux is loaded as is: no stripping or patching
        passthru.fragment = ./guest/kernel/microvm.config;
        meta = {
          description = "agentvm guest kernel (virtio-mmio, PVH, no modules)";
          license = lib.licenses.gpl2Only;
          platforms = [ system ];
        };
      };

      # A guest image laid out like `agentvm image build` (what
      # `agentvm boot --image DIR` reads): vmlinux, initrd.img, cmdline.
      #
      # shareNixStore: the host's /nix/store is shared read-only into the
      # guest over virtio-fs and mounted at /nix/store, so anything in the
      # host's store runs in the guest. It adds `--share /nix/store:nixstore:ro`
      # to the image's `boot-args` and to its `boot` wrapper; `agentvm boot`
      # turns each --share into the agent's `agentvm.share=nixstore:/nix/store:ro`
      # (crates/cli/src/share.rs), so it is not repeated in `cmdline`
      # (the agent would mount it twice); `agentCmdline` has it for other VMMs.
      # The initramfs's own /nix/store (agent, busybox) is mounted over; the
      # host's store holds the same paths, so /bin keeps working.
      #
      # packages (nixpkgs derivations) and agents (names of the built-in
      # agent plugins: claude-code, codex, gemini, opencode, from nixpkgs)
      # are the Nix counterpart of the configuration's `packages`/`npm`
      # lists: one buildEnv whose bin/ is the guest's /usr/local/bin (on the
      # agent's PATH). Its store paths come from the host's /nix/store, so
      # they need shareNixStore.
      agentPackages = {
        claude-code = pkgs.claude-code;
        codex = pkgs.codex;
        gemini = pkgs.gemini-cli;
        opencode = pkgs.opencode;
      };
      mkGuest =
        {
          kernel ? guest-kernel,
          agent ? agentvm-guest,
          busybox ? pkgs.pkgsStatic.busybox,
          cmdline ? defaultCmdline,
          extraCmdline ? [ ],
          shareNixStore ? false,
          packages ? [ ],
          agents ? [ ],
        }:
        assert lib.assertMsg (packages ++ agents == [ ] || shareNixStore)
          "mkGuest: packages and agents live in the host's /nix/store: set shareNixStore = true";
        let
          env = pkgs.buildEnv {
            name = "agentvm-guest-env";
            paths = packages ++ map (a: agentPackages.${a}) agents;
          };
          initrd = pkgs.makeInitrd {
            name = "agentvm-guest-initrd";
            # Legacy LZ4 framing (`lz4 -l`), what CONFIG_RD_LZ4 unpacks.
            compressor = "lz4";
            contents = [
              {
                object = "${agent}/bin/agentvm-guest";
                symlink = "/init";
              }
              {
                object = "${busybox}/bin";
                symlink = "/bin";
              }
            ]
            ++ lib.optionals (packages ++ agents != [ ]) [
              {
                object = "${env}/bin";
                symlink = "/usr/local/bin";
              }
            ];
          };
          fullCmdline = lib.concatStringsSep " " ([ cmdline ] ++ extraCmdline);
          bootArgs = lib.optionals shareNixStore [
            "--share"
            "/nix/store:nixstore:ro"
          ];
          agentCmdline = lib.optionalString shareNixStore "agentvm.share=nixstore:/nix/store:ro";
          image = pkgs.runCommand "agentvm-guest-image" {
            passthru = {
              inherit
                kernel
                initrd
                bootArgs
                agentCmdline
                ;
              cmdline = fullCmdline;
              # `agentvm boot` on this image with its boot-args; more
              # arguments (--vsock, --memory, …) are passed on.
              boot = pkgs.writeShellScriptBin "agentvm-boot-guest" ''
                exec ${lib.getExe agentvm} boot --image ${image} ${lib.escapeShellArgs bootArgs} "$@"
              '';
            };
          } ''
            mkdir -p $out
            ln -s ${kernel}/vmlinux $out/vmlinux
            cp -L ${initrd}/initrd $out/initrd.img
            echo ${lib.escapeShellArg fullCmdline} > $out/cmdline
            : > $out/boot-args
            for a in ${lib.escapeShellArgs bootArgs}; do echo "$a" >> $out/boot-args; done
          '';
        in
        image;

      guest-image = mkGuest { };
    in
    {
      packages.${system} = {
        default = agentvm;
        inherit
          agentvm
          agentvm-guest
          guest-kernel
          guest-image
          ;
        guest-image-nixstore = mkGuest { shareNixStore = true; };
        # The host's store shared, with Claude Code from nixpkgs on PATH.
        guest-image-claude = mkGuest {
          shareNixStore = true;
          agents = [ "claude-code" ];
          packages = with pkgs; [
            bashInteractive
            coreutils
            git
            nodejs
          ];
        };
      };

      apps.${system} = {
        default = {
          type = "app";
          program = lib.getExe agentvm;
          meta.description = "agentvm";
        };
        # Boots guest-image-nixstore; pass --vsock UDS etc.
        boot-guest = {
          type = "app";
          program = lib.getExe self.packages.${system}.guest-image-nixstore.boot;
          meta.description = "agentvm boot on the Nix guest image with /nix/store shared";
        };
      };

      lib = {
        inherit mkGuest defaultCmdline;
      };

      # programs.agentvm: agentvm and `agentvm-boot-guest` (the flake's guest
      # image, optionally with the host's /nix/store shared).
      nixosModules.default =
        { config, ... }:
        let
          cfg = config.programs.agentvm;
        in
        {
          options.programs.agentvm = {
            enable = lib.mkEnableOption "agentvm, a KVM hypervisor for AI coding agents";
            package = lib.mkOption {
              type = lib.types.package;
              default = agentvm;
              description = "The agentvm package.";
            };
            shareNixStore = lib.mkOption {
              type = lib.types.bool;
              default = false;
              description = ''
                Share the host's /nix/store read-only into the guest
                (`--share /nix/store:nixstore:ro`; the guest agent mounts it at
                /nix/store from `agentvm.share=nixstore:/nix/store:ro`).
              '';
            };
            extraCmdline = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              description = "More kernel command-line words for the guest.";
            };
            packages = lib.mkOption {
              type = lib.types.listOf lib.types.package;
              default = [ ];
              description = "Packages on the guest's PATH (needs shareNixStore).";
            };
            agents = lib.mkOption {
              type = lib.types.listOf (lib.types.enum (builtins.attrNames agentPackages));
              default = [ ];
              description = "Coding agents in the guest, from nixpkgs (needs shareNixStore).";
            };
            guestImage = lib.mkOption {
              type = lib.types.package;
              default = mkGuest {
                inherit (cfg)
                  shareNixStore
                  extraCmdline
                  packages
                  agents
                  ;
              };
              defaultText = lib.literalExpression "agentvm.lib.mkGuest { inherit (cfg) shareNixStore extraCmdline packages agents; }";
              description = "The guest image `agentvm-boot-guest` boots.";
            };
          };
          config = lib.mkIf cfg.enable {
            environment.systemPackages = [
              cfg.package
              cfg.guestImage.boot
            ];
          };
        };

      devShells.${system}.default = pkgs.mkShell {
        packages = with pkgs; [
          rustc
          cargo
          clippy
          rustfmt
          cargo-nextest
          virtiofsd
          qemu
          acpica-tools
          binutils
          lz4
          cpio
          # guest/kernel/build.sh
          bc
          bison
          flex
          elfutils
          openssl
        ];
        AGENTVM_VIRTIOFSD = "${pkgs.virtiofsd}/bin/virtiofsd";
      };
    };
}
