//! `register-commands`: installs `/rollback` with every subcommand, typed options,
//! descriptions and autocomplete, in one guild or globally (a bulk overwrite: running it again
//! replaces the previous definition).

use serenity::all::{
    CommandOptionType, CreateCommand, CreateCommandOption, GuildId, Http, InteractionContext,
};

use crate::grammar::{OptionKind, SUBCOMMANDS};
use crate::interactions::COMMAND_NAME;

/// The `/rollback` command's definition.
pub fn rollback_command() -> CreateCommand {
    let mut command = CreateCommand::new(COMMAND_NAME)
        .description("Drive the rollback agent: runs, approvals, escalations, emergencies")
        .contexts(vec![InteractionContext::Guild]);
    for sub in SUBCOMMANDS {
        let mut option =
            CreateCommandOption::new(CommandOptionType::SubCommand, sub.name, sub.description);
        for o in sub.options.iter().filter(|o| !o.in_modal) {
            let kind = match o.kind {
                OptionKind::Item => CommandOptionType::Integer,
                OptionKind::Flag => CommandOptionType::Boolean,
                _ => CommandOptionType::String,
            };
            let mut sub_option =
                CreateCommandOption::new(kind, o.name, o.description).required(o.required);
            match o.kind {
                OptionKind::Run | OptionKind::Runbook => {
                    sub_option = sub_option.set_autocomplete(true)
                }
                OptionKind::Item => sub_option = sub_option.min_int_value(1),
                OptionKind::Text => sub_option = sub_option.max_length(1000),
                _ => {}
            }
            option = option.add_sub_option(sub_option);
        }
        command = command.add_option(option);
    }
    command
}

/// Installs the command in `guild`, or globally without one.
pub async fn register(http: &Http, guild: Option<u64>) -> Result<usize, serenity::Error> {
    let commands = vec![rollback_command()];
    let installed = match guild {
        Some(guild) => {
            http.create_guild_commands(GuildId::new(guild), &commands)
                .await?
        }
        None => http.create_global_commands(&commands).await?,
    };
    Ok(installed.len())
}
