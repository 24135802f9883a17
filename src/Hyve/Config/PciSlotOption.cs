// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Config;

/// <summary>
/// bhyve(8)'s <c>-s [bus:]slot[:func],emulation[,conf]</c>: writes <c>pci.BUS.SLOT.FUNC.device</c> and the device's
/// settings under that node (bhyve_config(5) "PCI Device Settings").
/// <para>
/// The conf string is read as bhyve's per-device legacy parsers read it, simplified:
/// every device takes comma-separated <c>key=value</c> pairs, and a bare word <c>w</c> becomes <c>w=true</c>
/// (pci_parse_legacy_config), except for a leading bare word, which means:
/// block devices (virtio-blk, nvme): <c>path</c>; network devices (virtio-net, e1000): <c>backend</c>;
/// uart: <c>path</c>; ahci-hd / ahci-cd: device <c>ahci</c> with <c>port.0.type=hd|cd</c> and <c>port.0.path</c>
/// (further pairs go under <c>port.0</c>); ahci: each <c>hd:PATH</c> or <c>cd:PATH</c> opens the next <c>port.N</c>;
/// virtio-9p: <c>sharename=PATH</c> gives <c>sharename</c> and <c>path</c>;
/// virtio-console: each <c>NAME=PATH</c> gives <c>port.N.name</c> and <c>port.N.path</c>;
/// passthru: <c>BUS/SLOT/FUNC</c> gives <c>bus</c>, <c>slot</c>, <c>func</c>, another word gives <c>pptdev</c>.
/// </para>
/// </summary>
public static class PciSlotOption
{
    private enum Legacy { Generic, Block, Net, Uart, AhciHd, AhciCd, Ahci, NineP, Console, Passthru }

    // bhyve's device emulations (pci_emul.c's set plus aliases); hyve implements a subset, and the machine
    // builder reports an emulation it lacks. Knowing the full list here keeps typos a parse-time error.
    private static readonly Dictionary<string, Legacy> Devices = new(StringComparer.Ordinal)
    {
        ["hostbridge"] = Legacy.Generic,
        ["amd_hostbridge"] = Legacy.Generic,
        ["lpc"] = Legacy.Generic,
        ["ahci"] = Legacy.Ahci,
        ["ahci-hd"] = Legacy.AhciHd,
        ["ahci-cd"] = Legacy.AhciCd,
        ["e1000"] = Legacy.Net,
        ["fbuf"] = Legacy.Generic,
        ["hda"] = Legacy.Generic,
        ["nvme"] = Legacy.Block,
        ["passthru"] = Legacy.Passthru,
        ["piix4-pm"] = Legacy.Generic, // hyve's: PIIX4 PM function for firmware built for QEMU's i440FX
        ["uart"] = Legacy.Uart,
        ["virtio-9p"] = Legacy.NineP,
        ["virtio-blk"] = Legacy.Block,
        ["virtio-console"] = Legacy.Console,
        ["virtio-input"] = Legacy.Uart, // its leading word is the evdev path, stored as path like a uart's
        ["virtio-net"] = Legacy.Net,
        ["virtio-rnd"] = Legacy.Generic,
        ["virtio-scsi"] = Legacy.Generic,
        ["xhci"] = Legacy.Generic,
    };

    /// <summary>The emulation names <c>-s</c> accepts, sorted (what <c>-s help</c> prints).</summary>
    public static IReadOnlyList<string> KnownDevices
    {
        get
        {
            var names = new List<string>(Devices.Keys);
            names.Sort(StringComparer.Ordinal);
            return names;
        }
    }

    /// <summary>Parses one <c>-s</c> argument into <paramref name="config"/>; throws <see cref="ConfigException"/> on a bad slot.</summary>
    public static void Parse(ConfigTree config, string opt)
    {
        int comma = opt.IndexOf(',');
        if (comma < 0) throw new ConfigException($"Invalid PCI slot info field \"{opt}\": missing device emulation");
        string location = opt[..comma];
        string rest = opt[(comma + 1)..];
        int comma2 = rest.IndexOf(',');
        string emulation = comma2 < 0 ? rest : rest[..comma2];
        string? conf = comma2 < 0 ? null : rest[(comma2 + 1)..];

        var parts = location.Split(':');
        if (parts.Length > 3) throw new ConfigException($"Invalid PCI slot info field \"{opt}\"");
        int bus = 0, slot, func = 0;
        if (parts.Length == 3)
        {
            bus = Number(parts[0], "bus", 255, opt);
            slot = Number(parts[1], "slot", 31, opt);
            func = Number(parts[2], "function", 7, opt);
        }
        else
        {
            slot = Number(parts[0], "slot", 31, opt);
            if (parts.Length == 2) func = Number(parts[1], "function", 7, opt);
        }

        if (emulation.Length == 0)
            throw new ConfigException($"pci slot {bus}:{slot}:{func}: missing device emulation in \"{opt}\"");
        if (!Devices.TryGetValue(emulation, out var legacy))
            throw new ConfigException($"pci slot {bus}:{slot}:{func}: unknown device \"{emulation}\"");

        string node = $"pci.{bus}.{slot}.{func}";
        if (config.Exists(node)) throw new ConfigException($"pci slot {bus}:{slot}:{func} already occupied!");

        var tokens = conf is null ? [] : conf.Split(',');
        switch (legacy)
        {
            case Legacy.AhciHd:
            case Legacy.AhciCd:
                config.Set(node + ".device", "ahci");
                config.Set(node + ".port.0.type", legacy == Legacy.AhciHd ? "hd" : "cd");
                LeadingWord(config, node + ".port.0", "path", tokens);
                return;
            case Legacy.Ahci:
                config.Set(node + ".device", "ahci");
                ParseAhciPorts(config, node, tokens);
                return;
        }

        config.Set(node + ".device", emulation);
        switch (legacy)
        {
            case Legacy.Block:
            case Legacy.Uart:
                LeadingWord(config, node, "path", tokens);
                break;
            case Legacy.Net:
                LeadingWord(config, node, "backend", tokens);
                break;
            case Legacy.NineP:
                if (tokens.Length > 0 && tokens[0].IndexOf('=') is int eq and > 0 && tokens[0][..eq] is var share
                    && share is not ("path" or "ro" or "sharename"))
                {
                    config.Set(node + ".sharename", share);
                    config.Set(node + ".path", tokens[0][(eq + 1)..]);
                    Pairs(config, node, tokens.AsSpan(1));
                }
                else Pairs(config, node, tokens);
                break;
            case Legacy.Console:
                int port = 0;
                foreach (var t in tokens)
                {
                    if (t.Length == 0) continue;
                    int e = t.IndexOf('=');
                    if (e <= 0) throw new ConfigException($"pci slot {bus}:{slot}:{func}: invalid virtio-console port \"{t}\" (want NAME=PATH)");
                    config.Set($"{node}.port.{port}.name", t[..e]);
                    config.Set($"{node}.port.{port}.path", t[(e + 1)..]);
                    port++;
                }
                break;
            case Legacy.Passthru:
                if (tokens.Length > 0 && tokens[0].Length > 0 && tokens[0].IndexOf('=') < 0)
                {
                    var bsf = tokens[0].Split('/');
                    if (bsf.Length == 3)
                    {
                        config.Set(node + ".bus", bsf[0]);
                        config.Set(node + ".slot", bsf[1]);
                        config.Set(node + ".func", bsf[2]);
                    }
                    else config.Set(node + ".pptdev", tokens[0]);
                    Pairs(config, node, tokens.AsSpan(1));
                }
                else Pairs(config, node, tokens);
                break;
            default:
                Pairs(config, node, tokens);
                break;
        }
    }

    private static void ParseAhciPorts(ConfigTree config, string node, string[] tokens)
    {
        string target = node;
        int port = 0;
        foreach (var t in tokens)
        {
            if (t.StartsWith("hd:", StringComparison.Ordinal) || t.StartsWith("cd:", StringComparison.Ordinal))
            {
                target = $"{node}.port.{port++}";
                config.Set(target + ".type", t[..2]);
                config.Set(target + ".path", t[3..]);
            }
            else Pair(config, target, t);
        }
    }

    private static void LeadingWord(ConfigTree config, string node, string key, string[] tokens)
    {
        if (tokens.Length > 0 && tokens[0].Length > 0 && tokens[0].IndexOf('=') < 0)
        {
            config.Set(node + "." + key, tokens[0]);
            Pairs(config, node, tokens.AsSpan(1));
        }
        else Pairs(config, node, tokens);
    }

    private static void Pairs(ConfigTree config, string node, ReadOnlySpan<string> tokens)
    {
        foreach (var t in tokens) Pair(config, node, t);
    }

    // pci_parse_legacy_config: "name=value" sets name, a bare "name" sets name=true; empty tokens are skipped.
    private static void Pair(ConfigTree config, string node, string token)
    {
        if (token.Length == 0) return;
        int eq = token.IndexOf('=');
        if (eq == 0) throw new ConfigException($"invalid device option \"{token}\" for {node}");
        if (eq < 0) config.Set(node + "." + token, "true");
        else config.Set(node + "." + token[..eq], token[(eq + 1)..]);
    }

    private static int Number(string text, string what, int max, string opt)
    {
        if (!ConfigTree.IsDigits(text) || text.Length > 5 || int.Parse(text, System.Globalization.CultureInfo.InvariantCulture) > max)
            throw new ConfigException($"Invalid PCI slot info field \"{opt}\": {what} must be a number from 0 to {max}");
        return int.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
    }
}
